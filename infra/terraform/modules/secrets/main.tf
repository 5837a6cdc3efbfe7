# Secrets Manager secrets the Dagster runs and the event collector need, encrypted with a dedicated customer-managed key.
#
# Terraform creates the secret containers only; the VALUES are put out of band (see docs/DEPLOYMENT.md,
# "Secrets") so they never appear in Terraform state or plan output:
#   <name>/pseudonym-keys : JSON map {"<version>": "<64 hex chars>"} -> env PERSONALIZATION_PSEUDONYM_KEYS
#   <name>/snowflake      : JSON {"SNOWFLAKE_USER": "...", "SNOWFLAKE_PASSWORD": "<programmatic access token>"}
# and the event collector's two (infra/helm/collector.yaml), kept apart from the runs' secrets: the run
# role never reads them, and the collector role reads only these two:
#   <name>/collector-write-keys             : plain string "key1,key2" -> env PERSONALIZATION_COLLECTOR_WRITE_KEYS
#   <name>/collector-preference-token-secret: plain string (>= 32 chars) -> env PERSONALIZATION_PREFERENCE_TOKEN_SECRET
# Decryption is granted through IAM (modules/iam: run role and collector role, kms:ViaService = Secrets Manager).
# They reach the run pods as environment variables through External Secrets Operator
# (infra/helm/external-secrets.yaml): one Kubernetes Secret per AWS secret, referenced by the Helm
# values through envSecrets. Alternatively the code reads them itself with dagster-aws's Secrets Manager
# client when PERSONALIZATION_SECRETS_ARNS lists their ARNs (output secret_arns; docs/DEPLOYMENT.md).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  secrets = {
    pseudonym-keys = "HMAC keys for pseudonymization, JSON {\"<version>\": \"<hex key>\"} (PERSONALIZATION_PSEUDONYM_KEYS). Rotating = adding a version, never replacing one."
    snowflake      = "Snowflake credentials of the pipeline service user, JSON {SNOWFLAKE_USER, SNOWFLAKE_PASSWORD (programmatic access token)}."
  }

  # The event collector's secrets (personalization_assets/collector/config.py). Not in local.secrets: the
  # run role reads exactly the two above (modules/iam), the collector role exactly these two.
  collector_secrets = {
    collector-write-keys              = "Write keys of the event collector, comma-separated (PERSONALIZATION_COLLECTOR_WRITE_KEYS). Public per source (analytics.js embeds them); rotate by adding a key, moving the sources, then removing the old one."
    collector-preference-token-secret = "HMAC secret (>= 32 chars) of the preference center's subject tokens (PERSONALIZATION_PREFERENCE_TOKEN_SECRET), shared only with the backend that issues the tokens. Never equal to a write key."
  }
}

data "aws_iam_policy_document" "secrets_key" {
  #checkov:skip=CKV_AWS_109:KMS key policy: Resource "*" denotes this key only; the root statement is AWS's default delegation to IAM.
  #checkov:skip=CKV_AWS_111:KMS key policy: Resource "*" denotes this key only; usage is granted by IAM policies (modules/iam) restricted with kms:ViaService.
  #checkov:skip=CKV_AWS_356:KMS key policy: Resource "*" is the only valid resource in a key policy.
  statement {
    sid       = "EnableIamPoliciesOfThisAccount"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "secrets" {
  description             = "${var.name}: encrypts the application secrets in Secrets Manager"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.secrets_key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "secrets" {
  name          = "alias/${var.name}-secrets"
  target_key_id = aws_kms_key.secrets.key_id
}

resource "aws_secretsmanager_secret" "app" {
  for_each = local.secrets

  #checkov:skip=CKV2_AWS_57:No Lambda rotation: an HMAC pseudonymization key is rotated by ADDING a version (old pseudonyms must stay verifiable) and the Snowflake token by a Snowflake-side rotation; both are runbook steps in docs/DEPLOYMENT.md, and the token's expiry enforces the cadence.
  name                    = "${var.name}/${each.key}"
  description             = each.value
  kms_key_id              = aws_kms_key.secrets.arn
  recovery_window_in_days = var.recovery_window_days
  tags                    = merge(var.tags, { Name = "${var.name}/${each.key}" })
}

resource "aws_secretsmanager_secret" "collector" {
  for_each = local.collector_secrets

  #checkov:skip=CKV2_AWS_57:No Lambda rotation: write keys rotate by adding a key to the list, moving the SDK sources to it and removing the old one, and the token secret by a coordinated change with the issuing backend (tokens live at most 24 h); both are runbook steps in docs/DEPLOYMENT.md.
  name                    = "${var.name}/${each.key}"
  description             = each.value
  kms_key_id              = aws_kms_key.secrets.arn
  recovery_window_in_days = var.recovery_window_days
  tags                    = merge(var.tags, { Name = "${var.name}/${each.key}" })
}
