output "state_bucket" {
  description = "Bucket for backend.hcl (bucket = ...)."
  value       = aws_s3_bucket.state.id
}

output "state_kms_key_arn" {
  description = "KMS key for backend.hcl (kms_key_id = ...)."
  value       = aws_kms_key.state.arn
}
