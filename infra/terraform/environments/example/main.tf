# Example production environment: composes the modules into one deployment.
# Apply order is handled by Terraform's dependency graph; docs/DEPLOYMENT.md shows the staged
# `-target` sequence for the very first apply (network -> storage/secrets -> eks -> iam -> snowflake).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  name         = "personalization-${var.environment}"
  cluster_name = local.name
  namespace    = "dagster"

  # Role names are fixed here so modules can reference the ARNs without dependency cycles
  # (the bucket policy fence and the IAM roles refer to each other).
  run_role_name                 = "${local.name}-dagster-run"
  analyst_role_name             = "${local.name}-analyst"
  db_secret_reader_role_name    = "${local.name}-dagster-db-secret"
  run_service_account           = "personalization-runs"
  postgres_sync_service_account = "dagster-db-secret-reader"
  run_role_arn                  = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:role/${local.run_role_name}"

  # The event collector (infra/helm/collector.yaml): its IRSA role, service account and NodePort.
  collector_role_name       = "${local.name}-collector"
  collector_service_account = "personalization-collector"
  collector_role_arn        = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:role/${local.collector_role_name}"

  webserver_node_port = 30080
  collector_node_port = 30088
}

module "network" {
  source = "../../modules/network"

  name                = local.name
  cluster_name        = local.cluster_name
  vpc_cidr            = var.vpc_cidr
  availability_zones  = var.availability_zones
  single_nat_gateway  = var.single_nat_gateway
  ui_allowed_cidrs    = var.ui_allowed_cidrs
  webserver_node_port = local.webserver_node_port

  collector_allowed_cidrs = var.collector_allowed_cidrs
  collector_node_port     = local.collector_node_port
}

module "storage" {
  source = "../../modules/storage"

  name                          = local.name
  landing_prefix                = var.landing_prefix
  lake_prefix                   = var.lake_prefix
  ledger_prefix                 = var.ledger_prefix
  pii_principal_arns            = concat([local.run_role_arn], var.break_glass_role_arns)
  landing_writer_principal_arns = var.cdp_writer_principal_arns
  collector_principal_arns      = [local.collector_role_arn]
}

module "secrets" {
  source = "../../modules/secrets"

  name = local.name
}

################################################################################
# TLS certificate and DNS name of the UI
################################################################################

resource "aws_acm_certificate" "ui" {
  domain_name       = var.ui_domain_name
  validation_method = "DNS"

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_route53_record" "ui_validation" {
  for_each = {
    for dvo in aws_acm_certificate.ui.domain_validation_options : dvo.domain_name => {
      name   = dvo.resource_record_name
      record = dvo.resource_record_value
      type   = dvo.resource_record_type
    }
  }

  zone_id         = var.route53_zone_id
  name            = each.value.name
  type            = each.value.type
  records         = [each.value.record]
  ttl             = 300
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "ui" {
  certificate_arn         = aws_acm_certificate.ui.arn
  validation_record_fqdns = [for record in aws_route53_record.ui_validation : record.fqdn]
}

################################################################################
# TLS certificate and DNS name of the event collector (public: SDKs post to it)
################################################################################

resource "aws_acm_certificate" "collector" {
  domain_name       = var.collector_domain_name
  validation_method = "DNS"

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_route53_record" "collector_validation" {
  for_each = {
    for dvo in aws_acm_certificate.collector.domain_validation_options : dvo.domain_name => {
      name   = dvo.resource_record_name
      record = dvo.resource_record_value
      type   = dvo.resource_record_type
    }
  }

  zone_id         = var.route53_zone_id
  name            = each.value.name
  type            = each.value.type
  records         = [each.value.record]
  ttl             = 300
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "collector" {
  certificate_arn         = aws_acm_certificate.collector.arn
  validation_record_fqdns = [for record in aws_route53_record.collector_validation : record.fqdn]
}

module "eks" {
  source = "../../modules/eks"

  name                   = local.name
  cluster_name           = local.cluster_name
  kubernetes_version     = var.kubernetes_version
  vpc_id                 = module.network.vpc_id
  private_subnet_ids     = module.network.private_subnet_ids
  public_subnet_ids      = module.network.public_subnet_ids
  node_security_group_id = module.network.node_security_group_id
  alb_security_group_id  = module.network.alb_security_group_id
  logs_kms_key_arn       = module.network.logs_kms_key_arn
  run_node_max           = var.run_node_max
  db_password_version    = var.db_password_version
  certificate_arn        = aws_acm_certificate_validation.ui.certificate_arn
  access_log_bucket      = module.storage.log_bucket_name
  webserver_node_port    = local.webserver_node_port

  collector_certificate_arn       = aws_acm_certificate_validation.collector.certificate_arn
  collector_alb_security_group_id = module.network.collector_alb_security_group_id
  collector_node_port             = local.collector_node_port
  collector_access_log_prefix     = module.storage.collector_alb_log_prefix
}

resource "aws_route53_record" "ui" {
  zone_id = var.route53_zone_id
  name    = var.ui_domain_name
  type    = "A"

  alias {
    name                   = module.eks.alb_dns_name
    zone_id                = module.eks.alb_zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "collector" {
  zone_id = var.route53_zone_id
  name    = var.collector_domain_name
  type    = "A"

  alias {
    name                   = module.eks.collector_alb_dns_name
    zone_id                = module.eks.collector_alb_zone_id
    evaluate_target_health = true
  }
}

module "iam" {
  source = "../../modules/iam"

  name                                  = local.name
  run_role_name                         = local.run_role_name
  analyst_role_name                     = local.analyst_role_name
  db_secret_reader_role_name            = local.db_secret_reader_role_name
  oidc_provider_arn                     = module.eks.oidc_provider_arn
  oidc_issuer                           = module.eks.oidc_issuer
  namespace                             = local.namespace
  run_service_account_name              = local.run_service_account
  db_secret_reader_service_account_name = local.postgres_sync_service_account
  landing_bucket_arn                    = module.storage.landing_bucket_arn
  landing_prefix                        = var.landing_prefix
  lake_bucket_arn                       = module.storage.lake_bucket_arn
  lake_prefix                           = var.lake_prefix
  ledger_bucket_arn                     = module.storage.ledger_bucket_arn
  ledger_prefix                         = var.ledger_prefix
  data_kms_key_arn                      = module.storage.data_kms_key_arn
  secret_arns                           = module.secrets.secret_arns
  secrets_kms_key_arn                   = module.secrets.secrets_kms_key_arn
  db_secret_arn                         = module.eks.postgres_password_secret_arn
  db_secret_kms_key_arn                 = module.eks.platform_kms_key_arn
  analyst_principal_arns                = var.analyst_principal_arns
  collector_role_name                   = local.collector_role_name
  collector_service_account_name        = local.collector_service_account
  collector_secret_arns                 = module.secrets.collector_secret_arns
}

module "snowflake" {
  source = "../../modules/snowflake"

  prefix               = "PERSONALIZATION"
  database_name        = "PERSONALIZATION"
  auto_suspend_seconds = 60
  monthly_credit_quota = var.snowflake_monthly_credit_quota
  allowed_ip_list      = module.network.nat_public_ips
  analyst_parent_roles = var.snowflake_analyst_parent_roles
}

################################################################################
# Container registry of the user-code image
################################################################################

resource "aws_ecr_repository" "user_code" {
  name                 = var.container_image_repository
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
  }
}

resource "aws_ecr_lifecycle_policy" "user_code" {
  repository = aws_ecr_repository.user_code.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the 50 most recent images (rollbacks); older ones are unreferenced by runs."
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = 50
      }
      action = { type = "expire" }
    }]
  })
}
