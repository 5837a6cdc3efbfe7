output "landing_url" {
  description = "PERSONALIZATION_LANDING_URL."
  value       = module.storage.landing_url
}

output "ledger_url" {
  description = "PERSONALIZATION_LEDGER_URL: the append-only logs, in the S3 Object Lock bucket."
  value       = module.storage.ledger_url
}

output "lake_url" {
  description = "PERSONALIZATION_LAKE_URL."
  value       = module.storage.lake_url
}

output "cluster_name" {
  description = "EKS cluster (aws eks update-kubeconfig --name <this> --region <aws_region>)."
  value       = module.eks.cluster_name
}

output "ecr_repository_url" {
  description = "Push the user-code image here."
  value       = aws_ecr_repository.user_code.repository_url
}

output "ui_url" {
  description = "URL of the Dagster UI."
  value       = "https://${var.ui_domain_name}"
}

output "collector_url" {
  description = "Public URL of the event collector: SDKs post to <this>/v1/..., the preference center is <this>/privacy/preferences."
  value       = "https://${var.collector_domain_name}"
}

output "collector_role_arn" {
  description = "IRSA role of the collector service account (creates its own landing objects only)."
  value       = module.iam.collector_role_arn
}

output "collector_write_keys_secret_name" {
  description = "Put the collector's comma-separated write keys here (docs/DEPLOYMENT.md, step 12)."
  value       = module.secrets.collector_write_keys_secret_name
}

output "collector_preference_token_secret_name" {
  description = "Put the preference center's token secret here (docs/DEPLOYMENT.md, step 12)."
  value       = module.secrets.collector_preference_token_secret_name
}

output "run_role_arn" {
  description = "IRSA role of the run service account."
  value       = module.iam.run_role_arn
}

output "analyst_role_arn" {
  description = "Role analysts assume to read consented/ and features/."
  value       = module.iam.analyst_role_arn
}

output "cluster_autoscaler_role_arn" {
  description = "IRSA role for the cluster autoscaler (kube-system/cluster-autoscaler)."
  value       = module.eks.cluster_autoscaler_role_arn
}

output "pseudonym_keys_secret_name" {
  description = "Put the pseudonymization key map here (docs/DEPLOYMENT.md, Secrets)."
  value       = module.secrets.pseudonym_keys_secret_name
}

output "snowflake_secret_name" {
  description = "Put the Snowflake user and token here (docs/DEPLOYMENT.md, Secrets)."
  value       = module.secrets.snowflake_secret_name
}

output "snowflake_pipeline_user" {
  description = "Snowflake service user of the runs (create its programmatic access token)."
  value       = module.snowflake.pipeline_user
}

output "snowflake_pseudonym_tag" {
  description = "Tag the pipeline sets on pseudonym columns."
  value       = module.snowflake.pseudonym_tag
}

output "nat_public_ips" {
  description = "Egress IPs of the platform (Snowflake network policy, CDP allow-lists)."
  value       = module.network.nat_public_ips
}

# Environment-specific settings the Helm values need. infra/scripts/render_helm_values.py merges them
# into infra/helm/values.yaml (including the user-deployment list, which Helm cannot merge itself):
#   terraform output -json deployment_settings > settings.json
#   python infra/scripts/render_helm_values.py --settings settings.json --image-tag <git-sha> -o values.env.yaml
output "deployment_settings" {
  description = "Environment-specific values for infra/scripts/render_helm_values.py (no secrets)."
  value = {
    image_repository         = aws_ecr_repository.user_code.repository_url
    aws_region               = var.aws_region
    landing_url              = module.storage.landing_url
    lake_url                 = module.storage.lake_url
    ledger_url               = module.storage.ledger_url
    postgres_host            = module.eks.postgres_host
    postgres_port            = module.eks.postgres_port
    postgres_db_name         = module.eks.postgres_db_name
    postgres_username        = module.eks.postgres_username
    run_role_arn             = module.iam.run_role_arn
    run_service_account_name = module.iam.run_service_account_name
    snowflake_account        = "${var.snowflake_organization_name}-${var.snowflake_account_name}"
    snowflake_role           = module.snowflake.pipeline_role
    snowflake_warehouse      = module.snowflake.pipeline_warehouse
    snowflake_database       = module.snowflake.database
    snowflake_schema         = module.snowflake.default_schema
    # the event collector (infra/helm/collector.yaml, rendered with --collector-output)
    collector_role_arn             = module.iam.collector_role_arn
    collector_service_account_name = module.iam.collector_service_account_name
    vpc_cidr                       = module.network.vpc_cidr
  }
}

output "external_secrets_manifest" {
  description = "SecretStores and ExternalSecrets that copy the secrets into Kubernetes (Postgres, the two app secrets, the collector's two): terraform output -raw external_secrets_manifest | kubectl apply -f -"
  value = templatefile("${path.module}/../../../helm/external-secrets.yaml.tftpl", {
    namespace                     = local.namespace
    aws_region                    = var.aws_region
    run_service_account           = local.run_service_account
    postgres_sync_service_account = local.postgres_sync_service_account
    db_secret_reader_role_arn     = module.iam.db_secret_reader_role_arn
    postgres_password_secret_name = module.eks.postgres_password_secret_name
    pseudonym_keys_secret_name    = module.secrets.pseudonym_keys_secret_name
    snowflake_secret_name         = module.secrets.snowflake_secret_name

    collector_service_account              = local.collector_service_account
    collector_write_keys_secret_name       = module.secrets.collector_write_keys_secret_name
    collector_preference_token_secret_name = module.secrets.collector_preference_token_secret_name
  })
}
