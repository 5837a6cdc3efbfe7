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

output "collector_write_keys_secret_name" {
  description = "Name of the collector's write-keys secret (remoteRef.key in the ExternalSecret; PERSONALIZATION_COLLECTOR_WRITE_KEYS)."
  value       = aws_secretsmanager_secret.collector["collector-write-keys"].name
}

output "collector_preference_token_secret_name" {
  description = "Name of the preference center's token-secret secret (remoteRef.key in the ExternalSecret; PERSONALIZATION_PREFERENCE_TOKEN_SECRET)."
  value       = aws_secretsmanager_secret.collector["collector-preference-token-secret"].name
}

output "collector_secret_arns" {
  description = "ARNs of the collector's two secrets (and nothing else): what the collector role may read."
  value       = [for s in aws_secretsmanager_secret.collector : s.arn]
}
