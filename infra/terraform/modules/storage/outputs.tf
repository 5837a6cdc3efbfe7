output "landing_bucket_name" {
  description = "Landing bucket: PERSONALIZATION_LANDING_URL=s3://<this>/<landing_prefix>."
  value       = aws_s3_bucket.landing.id
}

output "landing_bucket_arn" {
  description = "ARN of the landing bucket."
  value       = aws_s3_bucket.landing.arn
}

output "lake_bucket_name" {
  description = "Lake bucket: PERSONALIZATION_LAKE_URL=s3://<this>/<lake_prefix>."
  value       = aws_s3_bucket.lake.id
}

output "lake_bucket_arn" {
  description = "ARN of the lake bucket."
  value       = aws_s3_bucket.lake.arn
}

output "ledger_bucket_name" {
  description = "Ledger bucket (S3 Object Lock): PERSONALIZATION_LEDGER_URL=s3://<this>/<ledger_prefix>."
  value       = aws_s3_bucket.ledger.id
}

output "ledger_bucket_arn" {
  description = "ARN of the ledger bucket."
  value       = aws_s3_bucket.ledger.arn
}

output "ledger_url" {
  description = "Value of PERSONALIZATION_LEDGER_URL."
  value       = "s3://${aws_s3_bucket.ledger.id}/${var.ledger_prefix}"
}

output "ledger_prefix" {
  description = "Key prefix of the logs inside the ledger bucket."
  value       = var.ledger_prefix
}

output "landing_url" {
  description = "Value of PERSONALIZATION_LANDING_URL."
  value       = "s3://${aws_s3_bucket.landing.id}/${var.landing_prefix}"
}

output "lake_url" {
  description = "Value of PERSONALIZATION_LAKE_URL."
  value       = "s3://${aws_s3_bucket.lake.id}/${var.lake_prefix}"
}

output "landing_prefix" {
  description = "Key prefix of the landing area inside the landing bucket."
  value       = var.landing_prefix
}

output "lake_prefix" {
  description = "Key prefix of the lake inside the lake bucket."
  value       = var.lake_prefix
}

output "data_kms_key_arn" {
  description = "ARN of the customer-managed key encrypting the data buckets (landing, lake, ledger)."
  value       = aws_kms_key.data.arn
}

output "log_bucket_name" {
  description = "Bucket receiving S3 server access logs (s3/) and ALB access logs (alb/; the collector's under collector_alb_log_prefix)."
  value       = aws_s3_bucket.logs.id
}

output "collector_alb_log_prefix" {
  description = "Prefix of the event collector ALB's access logs in the log bucket (expired after collector_access_log_retention_days)."
  value       = local.collector_alb_log_prefix
}
