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
# collector role (IRSA) : the event collector (service account <namespace>/<collector_service_account_name>,
#                         infra/helm/collector.yaml). Creates its own landing objects
#                         (<landing_prefix>events/date=*/hour=*/collector-*); for the preference center's store
#                         reads two small lake tables (privacy/suppression_list: erased subjects' pseudonyms;
#                         privacy/pseudonym_key_ids) and appends its reads of them to the access audit log (the
#                         log's lease and head hint in the lake, a segment in the ledger). Nothing else: every
#                         other read, write or delete is denied explicitly. Reads exactly its two secrets.

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

  # The event collector (personalization_assets/collector). Its landing objects, named by writer.py (object_name):
  # <landing_prefix>events/date=YYYY-MM-DD/hour=HH/collector-<ms>-<digest>.jsonl.gz
  # (plain lists, no for-expressions: tests/infra/test_collector_deployment.py evaluates them against the S3 requests
  # the collector really makes)
  collector_key_pattern = "${var.landing_prefix}events/date=*/hour=*/collector-*"
  collector_objects     = ["${var.landing_bucket_arn}/${local.collector_key_pattern}"]
  # the lake tables its preference store reads (collector/app.py: key_chain, suppression_feed)
  collector_lake_read_objects = [
    "${var.lake_bucket_arn}/${var.lake_prefix}privacy/suppression_list/*",
    "${var.lake_bucket_arn}/${var.lake_prefix}privacy/pseudonym_key_ids/*",
  ]
  # its reads are recorded in the access audit log (core/audit.py, core/hash_chain.py): the writer lease and the head
  # hint live in the lake, the segments (write-once, Object Lock) in the ledger
  collector_audit_lease      = "${var.lake_bucket_arn}/${var.lake_prefix}privacy/access_audit_log/_writer.lease"
  collector_audit_lake_files = [local.collector_audit_lease, "${var.lake_bucket_arn}/${var.lake_prefix}privacy/access_audit_log/_head.json"]
  collector_audit_segments   = "${var.ledger_bucket_arn}/${var.ledger_prefix}privacy/access_audit_log/*"
  collector_lake_list_prefixes = [
    "${var.lake_prefix}privacy/suppression_list/*",
    "${var.lake_prefix}privacy/pseudonym_key_ids/*",
    "${var.lake_prefix}privacy/access_audit_log/*",
  ]
  # everything it may read, and everything it may write; the rest is denied explicitly (DenyEverythingElse*)
  collector_readable = concat(local.collector_objects, local.collector_lake_read_objects, local.collector_audit_lake_files, [local.collector_audit_segments])
  collector_writable = concat(local.collector_objects, local.collector_audit_lake_files, [local.collector_audit_segments])
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

################################################################################
# Event collector role (IRSA)
################################################################################

data "aws_iam_policy_document" "collector_assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.collector_service_account_name}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "collector" {
  name                 = var.collector_role_name
  description          = "Event collector of ${var.name}: its landing objects, suppression list read, audit append (IRSA ${var.namespace}/${var.collector_service_account_name})"
  assume_role_policy   = data.aws_iam_policy_document.collector_assume.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "collector" {
  # --- landing: its own event objects -------------------------------------------------------------------------
  # pyarrow's S3 writer uploads every object as a multipart upload (CreateMultipartUpload, UploadPart,
  # CompleteMultipartUpload: all s3:PutObject) and aborts it when a part fails.
  statement {
    sid       = "CreateCollectorObjects"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = local.collector_objects
  }

  # After a write that failed or was cut short, a retried message is looked up before it is written again
  # (dedup.py: "uncommitted row, object exists"). pyarrow's existence check is a HeadObject (needs
  # s3:GetObject) and, for a missing key, a ListObjectsV2 of "<key>/" (needs s3:ListBucket; without it S3
  # also answers a missing key with 403 instead of 404). Both are limited to the collector's own keys;
  # without them every retry after a failed write fails again (503) until the dedup window ends.
  statement {
    sid       = "CheckOwnObjectsAfterAFailedWrite"
    actions   = ["s3:GetObject"]
    resources = local.collector_objects
  }

  statement {
    sid       = "ListOwnLandingKeysOnly"
    actions   = ["s3:ListBucket"]
    resources = [var.landing_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [local.collector_key_pattern]
    }
  }

  # --- lake: the two tables the preference store follows, and the audit log's coordination objects -------------
  # The suppression list holds the pseudonyms of erased subjects (the store forgets them); the key ids let the
  # collector refuse a pseudonymization key the lake's pseudonyms were not made with. Read only, nothing else.
  statement {
    sid       = "ReadSuppressionListAndKeyIds"
    actions   = ["s3:GetObject"]
    resources = local.collector_lake_read_objects
  }

  statement {
    sid       = "ListThoseTablesAndTheAuditLogOnly"
    actions   = ["s3:ListBucket"]
    resources = [var.lake_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = local.collector_lake_list_prefixes
    }
  }

  # The audit log's writer lease (created If-None-Match, renewed If-Match, deleted If-Match on release) and its
  # head hint: coordination objects in the lake, next to the log's name, never data.
  statement {
    sid       = "AuditLogWriterLeaseAndHeadHint"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = local.collector_audit_lake_files
  }

  # --- ledger: append its reads to the access audit log (write-once segments with Object Lock) -----------------
  statement {
    sid       = "AppendToTheAccessAuditLog"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:PutObjectRetention"]
    resources = [local.collector_audit_segments]
  }

  statement {
    sid       = "ListTheAccessAuditLogOnly"
    actions   = ["s3:ListBucket"]
    resources = [var.ledger_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.ledger_prefix}privacy/access_audit_log/*"]
    }
  }

  # Multipart uploads under SSE-KMS need kms:Decrypt as well as kms:GenerateDataKey (landing, lake and ledger
  # share the data key).
  statement {
    sid       = "UseDataKeyThroughS3"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [var.data_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }

  # External Secrets copies these two into Kubernetes through this role (SecretStore aws-personalization-collector).
  # The pseudonymization keys reach the pod from the Kubernetes Secret the runs' SecretStore already creates.
  statement {
    sid       = "ReadTheTwoCollectorSecrets"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = var.collector_secret_arns
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

  # --- defense in depth: explicit denies beat any allow attached to this role later -----------------------------
  # No other object of any bucket is read (raw/, consented/, features/, the other privacy tables, the consent
  # ledger, CDP batches and exports) ...
  statement {
    sid           = "DenyEverythingElseRead"
    effect        = "Deny"
    actions       = ["s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectAttributes"]
    not_resources = local.collector_readable
  }

  # ... written ...
  statement {
    sid           = "DenyEverythingElseWritten"
    effect        = "Deny"
    actions       = ["s3:PutObject", "s3:PutObjectRetention", "s3:PutObjectLegalHold", "s3:RestoreObject", "s3:AbortMultipartUpload"]
    not_resources = local.collector_writable
  }

  # ... or deleted: only the audit log's lease is ever removed, and no object version at all.
  statement {
    sid           = "DenyDeletesButTheLease"
    effect        = "Deny"
    actions       = ["s3:DeleteObject"]
    not_resources = [local.collector_audit_lease]
  }

  statement {
    sid       = "DenyVersionDeletesAndGovernanceBypass"
    effect    = "Deny"
    actions   = ["s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"]
    resources = [var.landing_bucket_arn, "${var.landing_bucket_arn}/*", var.lake_bucket_arn, "${var.lake_bucket_arn}/*", var.ledger_bucket_arn, "${var.ledger_bucket_arn}/*"]
  }
}

resource "aws_iam_policy" "collector" {
  name        = "${var.collector_role_name}-data-access"
  description = "Event collector: its own landing objects, the suppression list and key ids (read), the access audit log (append), its two secrets"
  policy      = data.aws_iam_policy_document.collector.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "collector" {
  role       = aws_iam_role.collector.name
  policy_arn = aws_iam_policy.collector.arn
}
