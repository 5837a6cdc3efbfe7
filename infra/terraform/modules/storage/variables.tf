variable "name" {
  description = "Name prefix of every resource (e.g. \"personalization-prod\"). Lower case, digits and dashes; bucket names append the account id."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$", var.name))
    error_message = "name must be 3-40 characters of a-z, 0-9 and '-', starting and ending with a letter or digit."
  }
}

variable "landing_prefix" {
  description = "Key prefix of the landing area inside the landing bucket: the <prefix> of PERSONALIZATION_LANDING_URL=s3://<bucket>/<prefix>. Empty or ending with '/'."
  type        = string
  default     = ""

  validation {
    condition     = var.landing_prefix == "" || can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*/$", var.landing_prefix))
    error_message = "landing_prefix must be empty or a relative key prefix ending with '/' (no leading '/')."
  }
}

variable "lake_prefix" {
  description = "Key prefix of the lake inside the lake bucket: the <prefix> of PERSONALIZATION_LAKE_URL=s3://<bucket>/<prefix>. Empty or ending with '/'. The retention tiers (raw/, privacy/, consented/, features/) live under it."
  type        = string
  default     = ""

  validation {
    condition     = var.lake_prefix == "" || can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*/$", var.lake_prefix))
    error_message = "lake_prefix must be empty or a relative key prefix ending with '/' (no leading '/')."
  }
}

variable "ledger_prefix" {
  description = "Key prefix of the append-only logs inside the ledger bucket: the <prefix> of PERSONALIZATION_LEDGER_URL=s3://<bucket>/<prefix>. Empty or ending with '/'. The logs live under <prefix>privacy/."
  type        = string
  default     = ""

  validation {
    condition     = var.ledger_prefix == "" || can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*/$", var.ledger_prefix))
    error_message = "ledger_prefix must be empty or a relative key prefix ending with '/' (no leading '/')."
  }
}

variable "pii_principal_arns" {
  description = "IAM principal ARNs allowed to read or write the PII tiers of the lake (raw/ and privacy/), the ledger and the landing objects: the Dagster run role and, if any, a break-glass role. Everyone else is denied by the bucket policy even if an IAM policy would allow it. Empty disables the guard (not recommended)."
  type        = list(string)
  default     = []
}

variable "landing_writer_principal_arns" {
  description = "IAM principal ARNs of the CDP destination that writes batches into the landing bucket (e.g. the Segment or RudderStack S3 destination role, possibly in another account). Granted s3:PutObject under the landing prefix and use of the data key."
  type        = list(string)
  default     = []
}

variable "collector_principal_arns" {
  description = "IAM principal ARNs of the event collector (modules/iam collector role). Exempted from the PII fences; what it may do is its IAM policy's, which denies explicitly everything but its own landing objects (events/*/collector-*), reading privacy/suppression_list and privacy/pseudonym_key_ids, and appending to the access audit log."
  type        = list(string)
  default     = []
}

variable "access_log_retention_days" {
  description = "Days to keep S3 server access logs and ALB access logs in the log bucket (security evidence; not personal data of data subjects)."
  type        = number
  default     = 365

  validation {
    condition     = var.access_log_retention_days >= 90
    error_message = "Keep access logs at least 90 days."
  }
}

variable "collector_access_log_retention_days" {
  description = "Days to keep the event collector ALB's access logs (alb-collector/ in the log bucket): they hold end users' IP addresses, user agents and request URLs, so they are kept no longer than the landing data (retention.yaml, landing)."
  type        = number
  default     = 30

  validation {
    condition     = var.collector_access_log_retention_days >= 7 && var.collector_access_log_retention_days <= 90
    error_message = "Keep the collector's access logs 7-90 days."
  }
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the data KMS key is deleted after it is scheduled for deletion (7-30 days)."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
