output "pseudonym_keys_secret_arn" {
  description = "ARN of the pseudonymization key-map secret (PERSONALIZATION_PSEUDONYM_KEYS)."
  value       = aws_secretsmanager_secret.app["pseudonym-keys"].arn
}

output "pseudonym_keys_secret_name" {
  description = "Name of the pseudonymization key-map secret (remoteRef.key in the ExternalSecret)."
  value       = aws_secretsmanager_secret.app["pseudonym-keys"].name
}

output "snowflake_secret_arn" {
  description = "ARN of the Snowflake credentials secret."
  value       = aws_secretsmanager_secret.app["snowflake"].arn
}

output "snowflake_secret_name" {
  description = "Name of the Snowflake credentials secret (remoteRef.key in the ExternalSecret)."
  value       = aws_secretsmanager_secret.app["snowflake"].name
}

output "secret_arns" {
  description = "ARNs of the two application secrets (and nothing else): what the run role may read."
  value       = [for s in aws_secretsmanager_secret.app : s.arn]
}

output "secrets_kms_key_arn" {
  description = "KMS key encrypting the application secrets."
  value       = aws_kms_key.secrets.arn
}
