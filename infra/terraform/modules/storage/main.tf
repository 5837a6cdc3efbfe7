# Landing, lake and ledger buckets, the access-log bucket and the customer-managed key that encrypts the data.
#
# * The ledger bucket holds the append-only, hash-chained logs (consent ledger, access audit, erasure,
#   retention, key rotation, DP budget: PERSONALIZATION_LEDGER_URL). It is created with S3 Object Lock;
#   its default retention (COMPLIANCE, days) is generated from privacy_policies/retention.yaml
#   (tier privacy_logs) into lifecycle.generated.tf, and the writer locks each segment explicitly too.
#   Its bucket policy denies every delete and every PUT without `If-None-Match` (no overwrite, no new
#   version on top of a segment) to everyone, the pipeline included.
# * All data buckets: SSE-KMS with a customer-managed key (yearly rotation) and S3 Bucket Keys,
#   versioning, all public access blocked, ACLs disabled, TLS-only bucket policy, server access
#   logging to the log bucket, EventBridge notifications.
# * Lifecycle rules (expiry per tier prefix, noncurrent versions, incomplete uploads) are generated
#   from privacy_policies/retention.yaml into lifecycle.generated.tf: do not add expiry rules here.
# * The PII tiers (landing, lake raw/ and privacy/) are fenced by the bucket policy: only
#   var.pii_principal_arns may read or write them, whatever IAM policies say. The landing objects also
#   admit the CDP writer (var.landing_writer_principal_arns). The event collector (var.collector_principal_arns)
#   passes the fences too, and its IAM policy (modules/iam) confines it with explicit denies to its own landing
#   objects, two lake tables (privacy/suppression_list, privacy/pseudonym_key_ids) and the access audit log.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.region

  data_buckets = {
    landing = {
      name        = "${var.name}-landing-${local.account_id}"
      base_prefix = var.landing_prefix
      description = "CDP batches (events, CRM, catalog, privacy requests) - personal data"
    }
    lake = {
      name        = "${var.name}-lake-${local.account_id}"
      base_prefix = var.lake_prefix
      description = "Parquet lake: raw/ and privacy/ (personal data), consented/ and features/ (curated)"
    }
    ledger = {
      name        = "${var.name}-ledger-${local.account_id}"
      base_prefix = var.ledger_prefix
      description = "Append-only hash-chained logs (consent ledger, audit log): write-once, S3 Object Lock"
    }
  }
  log_bucket_name = "${var.name}-access-logs-${local.account_id}"
  # ALB access-log prefixes: alb/ (Dagster UI), alb-collector/ (event collector: end users' requests)
  collector_alb_log_prefix = "alb-collector"

  # Object ARNs of the PII areas fenced by the bucket policies.
  pii_object_arns = {
    landing = ["arn:${local.partition}:s3:::${local.data_buckets.landing.name}/${var.landing_prefix}*"]
    lake = [
      "arn:${local.partition}:s3:::${local.data_buckets.lake.name}/${var.lake_prefix}raw/*",
      "arn:${local.partition}:s3:::${local.data_buckets.lake.name}/${var.lake_prefix}privacy/*",
    ]
    ledger = ["arn:${local.partition}:s3:::${local.data_buckets.ledger.name}/${var.ledger_prefix}*"]
  }
}

################################################################################
# Customer-managed key for the landing and lake buckets
################################################################################

data "aws_iam_policy_document" "data_key" {
  #checkov:skip=CKV_AWS_109:KMS key policy: Resource "*" means this key only and cannot be narrowed; the root statement is AWS's default that delegates key access to IAM policies.
  #checkov:skip=CKV_AWS_111:KMS key policy: Resource "*" means this key only and cannot be narrowed; writes are limited by principal and kms:ViaService.
  #checkov:skip=CKV_AWS_356:KMS key policy: Resource "*" is the only valid resource in a key policy (it denotes the key the policy is attached to).
  # Key administration and usage are delegated to IAM policies of this account (least-privilege
  # grants live in modules/iam). Without this statement the key would become unmanageable.
  statement {
    sid       = "EnableIamPoliciesOfThisAccount"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  dynamic "statement" {
    for_each = length(var.landing_writer_principal_arns) > 0 ? [1] : []
    content {
      sid       = "AllowCdpWriterThroughS3Only"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = ["*"]

      principals {
        type        = "AWS"
        identifiers = var.landing_writer_principal_arns
      }

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_kms_key" "data" {
  description             = "${var.name}: encrypts the landing, lake and ledger buckets"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.data_key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data.key_id
}

################################################################################
# Landing and lake buckets
################################################################################

resource "aws_s3_bucket" "landing" {
  #checkov:skip=CKV_AWS_144:No cross-Region replica of personal data: a replica would double the surface that erasure and retention must cover and may break data-residency commitments; durability comes from S3 (11 nines) plus versioning, and the CDP can re-deliver.
  bucket        = local.data_buckets.landing.name
  force_destroy = false

  tags = merge(var.tags, {
    Name               = local.data_buckets.landing.name
    DataClassification = "personal-data"
    Purpose            = local.data_buckets.landing.description
  })
}

resource "aws_s3_bucket" "lake" {
  #checkov:skip=CKV_AWS_144:No cross-Region replica of personal data: a replica would double the surface that erasure and retention must cover and may break data-residency commitments; durability comes from S3 (11 nines) plus versioning, and raw/ can be rebuilt from landing within its retention.
  bucket        = local.data_buckets.lake.name
  force_destroy = false

  tags = merge(var.tags, {
    Name               = local.data_buckets.lake.name
    DataClassification = "personal-data"
    Purpose            = local.data_buckets.lake.description
  })
}

resource "aws_s3_bucket" "ledger" {
  #checkov:skip=CKV_AWS_144:No cross-Region replica of personal data (pseudonymized consent decisions and audit rows): a replica would double the surface that retention must cover and may break data-residency commitments; durability comes from S3 (11 nines), versioning and Object Lock.
  bucket        = local.data_buckets.ledger.name
  force_destroy = false

  # Object Lock can only be enabled when the bucket is created. The default retention (mode and days)
  # is generated from retention.yaml: aws_s3_bucket_object_lock_configuration.ledger.
  object_lock_enabled = true

  tags = merge(var.tags, {
    Name               = local.data_buckets.ledger.name
    DataClassification = "personal-data"
    Purpose            = local.data_buckets.ledger.description
  })
}

locals {
  # Per-bucket settings below are applied to every data bucket through this map.
  data_bucket_ids = {
    landing = aws_s3_bucket.landing.id
    lake    = aws_s3_bucket.lake.id
    ledger  = aws_s3_bucket.ledger.id
  }
}

resource "aws_s3_bucket_ownership_controls" "data" {
  for_each = local.data_bucket_ids

  bucket = each.value
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  for_each = local.data_bucket_ids

  bucket                  = each.value
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "data" {
  for_each = local.data_bucket_ids

  bucket = each.value
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  for_each = local.data_bucket_ids

  bucket = each.value
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.data.arn
    }
    # S3 Bucket Keys cut KMS request costs by ~99% for Parquet-heavy workloads.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "data" {
  for_each = local.data_bucket_ids

  bucket        = each.value
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "s3/${each.key}/"

  depends_on = [aws_s3_bucket_policy.logs]
}

# Object-level events (new CDP batch, deletions by the retention or erasure jobs) go to EventBridge,
# where audit or alerting rules can pick them up without touching the bucket again.
resource "aws_s3_bucket_notification" "data" {
  for_each = local.data_bucket_ids

  bucket      = each.value
  eventbridge = true
}

data "aws_iam_policy_document" "data_bucket" {
  for_each = local.data_buckets

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      "arn:${local.partition}:s3:::${each.value.name}",
      "arn:${local.partition}:s3:::${each.value.name}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "DenyTlsOlderThan12"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = ["arn:${local.partition}:s3:::${each.value.name}", "arn:${local.partition}:s3:::${each.value.name}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }

  # Objects must be encrypted with the data key: an explicit SSE-S3 header or another key is refused
  # (requests without an encryption header get the bucket default, i.e. the data key).
  statement {
    sid       = "DenyOtherEncryption"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["arn:${local.partition}:s3:::${each.value.name}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["aws:kms"]
    }
  }

  statement {
    sid       = "DenyOtherKmsKey"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["arn:${local.partition}:s3:::${each.value.name}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = [aws_kms_key.data.arn]
    }
  }

  # PII fence: only the pipeline (and break-glass) may touch personal data, whatever IAM says.
  dynamic "statement" {
    for_each = length(var.pii_principal_arns) > 0 ? [1] : []
    content {
      sid       = "DenyPiiObjectAccessExceptPipeline"
      effect    = "Deny"
      actions   = ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:RestoreObject"]
      resources = local.pii_object_arns[each.key]

      principals {
        type        = "*"
        identifiers = ["*"]
      }

      condition {
        test     = "ArnNotLike"
        variable = "aws:PrincipalArn"
        values   = concat(var.pii_principal_arns, var.collector_principal_arns, each.key == "landing" ? var.landing_writer_principal_arns : [])
      }
    }
  }

  # Write-once ledger: nobody (the pipeline included) may delete a log object or a version of it, or put
  # an object without `If-None-Match: *` (which would stack a new version on top of a locked segment).
  # Object Lock already refuses deleting or replacing a locked version; these statements also refuse
  # delete markers and new versions, so a segment's current version is always the original.
  dynamic "statement" {
    for_each = each.key == "ledger" ? [1] : []
    content {
      sid       = "DenyLedgerDeletes"
      effect    = "Deny"
      actions   = ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"]
      resources = ["arn:${local.partition}:s3:::${each.value.name}/*"]

      principals {
        type        = "*"
        identifiers = ["*"]
      }
    }
  }

  dynamic "statement" {
    for_each = each.key == "ledger" ? [1] : []
    content {
      sid       = "DenyLedgerOverwrites"
      effect    = "Deny"
      actions   = ["s3:PutObject"]
      resources = ["arn:${local.partition}:s3:::${each.value.name}/*"]

      principals {
        type        = "*"
        identifiers = ["*"]
      }

      condition {
        test     = "Null"
        variable = "s3:if-none-match"
        values   = ["true"]
      }
    }
  }

  dynamic "statement" {
    for_each = each.key == "landing" && length(var.landing_writer_principal_arns) > 0 ? [1] : []
    content {
      sid       = "AllowCdpWriterPutObject"
      actions   = ["s3:PutObject"]
      resources = ["arn:${local.partition}:s3:::${each.value.name}/${var.landing_prefix}*"]

      principals {
        type        = "AWS"
        identifiers = var.landing_writer_principal_arns
      }
    }
  }

  dynamic "statement" {
    for_each = each.key == "landing" && length(var.landing_writer_principal_arns) > 0 ? [1] : []
    content {
      sid       = "AllowCdpWriterListBucket"
      actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
      resources = ["arn:${local.partition}:s3:::${each.value.name}"]

      principals {
        type        = "AWS"
        identifiers = var.landing_writer_principal_arns
      }
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  for_each = local.data_bucket_ids

  bucket = each.value
  policy = data.aws_iam_policy_document.data_bucket[each.key].json

  depends_on = [aws_s3_bucket_public_access_block.data]
}

################################################################################
# Access-log bucket (S3 server access logs and ALB access logs)
################################################################################

# Log delivery for Application Load Balancers in Regions launched before August 2022 uses a
# per-Region ELB account; newer Regions use the log-delivery service principal. Allow both.
data "aws_elb_service_account" "current" {}

resource "aws_s3_bucket" "logs" {
  #checkov:skip=CKV_AWS_18:This is the access-log target bucket itself; logging it into itself would loop and AWS advises against it.
  #checkov:skip=CKV_AWS_144:Access logs stay in-Region with the data they describe; durability comes from S3 and versioning, and a cross-Region copy would need its own retention and residency review.
  #checkov:skip=CKV_AWS_145:S3 server access log delivery only supports SSE-S3 (AES256) on the target bucket; SSE-KMS would silently stop log delivery.
  #checkov:skip=CKV2_AWS_62:Event notifications on the log bucket would emit one event per delivered log object and feed nothing.
  bucket        = local.log_bucket_name
  force_destroy = false

  tags = merge(var.tags, {
    Name               = local.log_bucket_name
    DataClassification = "security-logs"
  })
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket     = aws_s3_bucket.logs.id
  depends_on = [aws_s3_bucket_versioning.logs]

  rule {
    id     = "expire-access-logs"
    status = "Enabled"

    filter {}

    expiration {
      days = var.access_log_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 7
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  # The event collector's ALB logs every end user's request (client IP, user agent, the preference center's
  # URLs): personal data of data subjects, kept no longer than the events themselves. S3 applies the shorter
  # of two matching expirations, so this prefix expires after var.collector_access_log_retention_days.
  rule {
    id     = "expire-collector-access-logs"
    status = "Enabled"

    filter {
      prefix = "${local.collector_alb_log_prefix}/"
    }

    expiration {
      days = var.collector_access_log_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }
}

data "aws_iam_policy_document" "logs" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.logs.arn, "${aws_s3_bucket.logs.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "S3ServerAccessLogDelivery"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/s3/*"]

    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [for b in local.data_buckets : "arn:${local.partition}:s3:::${b.name}"]
    }
  }

  statement {
    sid       = "AlbAccessLogDeliveryService"
    actions   = ["s3:PutObject"]
    resources = [for p in ["alb", local.collector_alb_log_prefix] : "${aws_s3_bucket.logs.arn}/${p}/AWSLogs/${local.account_id}/*"]

    principals {
      type        = "Service"
      identifiers = ["logdelivery.elasticloadbalancing.amazonaws.com"]
    }
  }

  statement {
    sid       = "AlbAccessLogDeliveryLegacyRegions"
    actions   = ["s3:PutObject"]
    resources = [for p in ["alb", local.collector_alb_log_prefix] : "${aws_s3_bucket.logs.arn}/${p}/AWSLogs/${local.account_id}/*"]

    principals {
      type        = "AWS"
      identifiers = [data.aws_elb_service_account.current.arn]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  bucket     = aws_s3_bucket.logs.id
  policy     = data.aws_iam_policy_document.logs.json
  depends_on = [aws_s3_bucket_public_access_block.logs]
}
