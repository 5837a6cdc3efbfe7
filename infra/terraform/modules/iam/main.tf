# Least-privilege roles of the platform.
#
# run role (IRSA)       : the Dagster code server and every run pod (service account
#                         <namespace>/<run_service_account_name>). Reads landing, reads/writes the four
#                         lake tiers, uses the data key through S3 only, reads exactly the two
#                         application secrets; appends to the ledger bucket (create + Object Lock
#                         retention, never delete). It cannot delete old object versions (history is
#                         purged by lifecycle rules only), touch other buckets, or read any other secret.
# analyst role          : read-only on the curated tiers consented/ and features/; explicitly denied
#                         raw/, privacy/, the ledger and the landing bucket, whatever else is attached to it.
# db secret reader      : lets External Secrets copy the Postgres password into Kubernetes.

data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  partition = data.aws_partition.current.partition
  region    = data.aws_region.current.region

  lake_tiers         = ["raw", "privacy", "consented", "features"]
  curated_tiers      = ["consented", "features"]
  pii_tiers          = ["raw", "privacy"]
  lake_tier_objects  = [for t in local.lake_tiers : "${var.lake_bucket_arn}/${var.lake_prefix}${t}/*"]
  curated_objects    = [for t in local.curated_tiers : "${var.lake_bucket_arn}/${var.lake_prefix}${t}/*"]
  pii_objects        = [for t in local.pii_tiers : "${var.lake_bucket_arn}/${var.lake_prefix}${t}/*"]
  curated_list_scope = flatten([for t in local.curated_tiers : ["${var.lake_prefix}${t}/", "${var.lake_prefix}${t}/*"]])
  # the append-only logs: <ledger_prefix>privacy/<log>/segment=<seq>/data.parquet
  ledger_log_objects = ["${var.ledger_bucket_arn}/${var.ledger_prefix}privacy/*"]
}

################################################################################
# Dagster run role (IRSA)
################################################################################

data "aws_iam_policy_document" "run_assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.run_service_account_name}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "run" {
  name                 = var.run_role_name
  description          = "Dagster code server and run pods of ${var.name} (IRSA ${var.namespace}/${var.run_service_account_name})"
  assume_role_policy   = data.aws_iam_policy_document.run_assume.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "run" {
  statement {
    sid       = "ListDataBuckets"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [var.landing_bucket_arn, var.lake_bucket_arn, var.ledger_bucket_arn]
  }

  statement {
    sid       = "ReadLanding"
    actions   = ["s3:GetObject"]
    resources = ["${var.landing_bucket_arn}/${var.landing_prefix}*"]
  }

  statement {
    sid = "ReadWriteLakeTiers"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = local.lake_tier_objects
  }

  # Append-only: create a segment (If-None-Match, enforced by the bucket policy) with its Object Lock
  # retention, read segments back. No delete, no retention change after the fact.
  statement {
    sid       = "AppendToLedger"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:PutObjectRetention"]
    resources = local.ledger_log_objects
  }

  statement {
    sid       = "UseDataKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.data_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }

  statement {
    sid       = "ReadTheTwoApplicationSecrets"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = var.secret_arns
  }

  statement {
    sid       = "DecryptSecretsThroughSecretsManager"
    actions   = ["kms:Decrypt"]
    resources = [var.secrets_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_policy" "run" {
  name        = "${var.run_role_name}-data-access"
  description = "Landing read, lake tiers read/write, ledger append, data key via S3, the two application secrets"
  policy      = data.aws_iam_policy_document.run.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "run" {
  role       = aws_iam_role.run.name
  policy_arn = aws_iam_policy.run.arn
}

################################################################################
# Analyst role: curated tiers only
################################################################################

data "aws_iam_policy_document" "analyst_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:SetSourceIdentity"]

    principals {
      type        = "AWS"
      identifiers = var.analyst_principal_arns
    }
  }
}

resource "aws_iam_role" "analyst" {
  name                 = var.analyst_role_name
  description          = "Read-only access of analysts to the curated lake tiers (consented/, features/) of ${var.name}"
  assume_role_policy   = data.aws_iam_policy_document.analyst_assume.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "analyst" {
  statement {
    sid       = "ListCuratedPrefixesOnly"
    actions   = ["s3:ListBucket"]
    resources = [var.lake_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = local.curated_list_scope
    }
  }

  statement {
    sid       = "ReadCuratedTiers"
    actions   = ["s3:GetObject"]
    resources = local.curated_objects
  }

  statement {
    sid       = "DecryptThroughS3"
    actions   = ["kms:Decrypt"]
    resources = [var.data_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }

  # Defense in depth: even if a broader policy is attached to this role later, personal data stays out
  # of reach (explicit deny beats any allow).
  statement {
    sid       = "DenyPersonalDataTiers"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = concat(local.pii_objects, [var.landing_bucket_arn, "${var.landing_bucket_arn}/*", var.ledger_bucket_arn, "${var.ledger_bucket_arn}/*"])
  }

  statement {
    sid       = "DenyListingPersonalDataTiers"
    effect    = "Deny"
    actions   = ["s3:ListBucket"]
    resources = [var.lake_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = flatten([for t in local.pii_tiers : ["${var.lake_prefix}${t}", "${var.lake_prefix}${t}/*"]])
    }
  }
}

resource "aws_iam_policy" "analyst" {
  name        = "${var.analyst_role_name}-curated-read"
  description = "Read-only on lake consented/ and features/; raw/, privacy/, ledger and landing denied"
  policy      = data.aws_iam_policy_document.analyst.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "analyst" {
  role       = aws_iam_role.analyst.name
  policy_arn = aws_iam_policy.analyst.arn
}

################################################################################
# External Secrets: reader of the Dagster Postgres password
################################################################################

data "aws_iam_policy_document" "db_secret_reader_assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.db_secret_reader_service_account_name}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "db_secret_reader" {
  name                 = var.db_secret_reader_role_name
  description          = "External Secrets: read the Dagster Postgres password of ${var.name}"
  assume_role_policy   = data.aws_iam_policy_document.db_secret_reader_assume.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "db_secret_reader" {
  statement {
    sid       = "ReadPostgresPassword"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [var.db_secret_arn]
  }

  statement {
    sid       = "DecryptThroughSecretsManager"
    actions   = ["kms:Decrypt"]
    resources = [var.db_secret_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "db_secret_reader" {
  name   = "read-postgres-password"
  role   = aws_iam_role.db_secret_reader.id
  policy = data.aws_iam_policy_document.db_secret_reader.json
}
