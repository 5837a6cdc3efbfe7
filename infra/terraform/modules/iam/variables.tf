variable "name" {
  description = "Name prefix (e.g. \"personalization-prod\")."
  type        = string
}

variable "run_role_name" {
  description = "Name of the IAM role of the Dagster run pods (and of the code server). Passed in so other modules can reference its ARN without a dependency cycle."
  type        = string
}

variable "analyst_role_name" {
  description = "Name of the read-only analyst role on the curated lake tiers."
  type        = string
}

variable "db_secret_reader_role_name" {
  description = "Name of the role External Secrets uses to copy the Dagster Postgres password into Kubernetes."
  type        = string
}

variable "collector_role_name" {
  description = "Name of the IAM role of the event collector (IRSA). Passed in so the landing bucket policy can exempt its ARN without a dependency cycle."
  type        = string
}

variable "oidc_provider_arn" {
  description = "ARN of the IAM OIDC provider of the EKS cluster (IRSA)."
  type        = string
}

variable "oidc_issuer" {
  description = "Issuer of the EKS OIDC provider without the https:// scheme (oidc.eks.<region>.amazonaws.com/id/<id>)."
  type        = string

  validation {
    condition     = !startswith(var.oidc_issuer, "https://")
    error_message = "oidc_issuer must not include the https:// scheme."
  }
}

variable "namespace" {
  description = "Kubernetes namespace of the Dagster release."
  type        = string
  default     = "dagster"
}

variable "run_service_account_name" {
  description = "Kubernetes service account of the user-code deployment and of every run pod it launches (dagster-user-deployments.serviceAccount.name in infra/helm/values.yaml)."
  type        = string
  default     = "personalization-runs"
}

variable "collector_service_account_name" {
  description = "Kubernetes service account of the event collector StatefulSet (infra/helm/collector.yaml); External Secrets also reads the collector's two secrets through it."
  type        = string
  default     = "personalization-collector"
}

variable "db_secret_reader_service_account_name" {
  description = "Kubernetes service account (no pods) whose token External Secrets uses to read the Postgres password."
  type        = string
  default     = "dagster-db-secret-reader"
}

variable "landing_bucket_arn" {
  description = "ARN of the landing bucket."
  type        = string
}

variable "landing_prefix" {
  description = "Key prefix of the landing area ('' or ending with '/')."
  type        = string
  default     = ""
}

variable "lake_bucket_arn" {
  description = "ARN of the lake bucket."
  type        = string
}

variable "lake_prefix" {
  description = "Key prefix of the lake ('' or ending with '/')."
  type        = string
  default     = ""
}

variable "ledger_bucket_arn" {
  description = "ARN of the ledger bucket (S3 Object Lock) holding the append-only logs."
  type        = string
}

variable "ledger_prefix" {
  description = "Key prefix of the logs in the ledger bucket ('' or ending with '/')."
  type        = string
  default     = ""
}

variable "data_kms_key_arn" {
  description = "ARN of the KMS key encrypting the landing, lake and ledger buckets."
  type        = string
}

variable "secret_arns" {
  description = "ARNs of exactly the two application secrets (pseudonym key map, Snowflake credentials) the runs may read."
  type        = list(string)

  validation {
    condition     = length(var.secret_arns) == 2
    error_message = "The run role reads exactly two secrets: the pseudonym key map and the Snowflake credentials."
  }
}

variable "collector_secret_arns" {
  description = "ARNs of exactly the collector's two secrets (write keys, preference-token secret) the collector role may read."
  type        = list(string)

  validation {
    condition     = length(var.collector_secret_arns) == 2
    error_message = "The collector role reads exactly two secrets: the write keys and the preference-token secret."
  }
}

variable "secrets_kms_key_arn" {
  description = "ARN of the KMS key encrypting the application secrets."
  type        = string
}

variable "db_secret_arn" {
  description = "ARN of the Secrets Manager secret holding the Dagster Postgres password."
  type        = string
}

variable "db_secret_kms_key_arn" {
  description = "ARN of the KMS key encrypting the Postgres password secret."
  type        = string
}

variable "analyst_principal_arns" {
  description = "IAM principals (e.g. IAM Identity Center permission-set roles of the analytics team) allowed to assume the analyst role."
  type        = list(string)

  validation {
    condition     = length(var.analyst_principal_arns) > 0 && alltrue([for arn in var.analyst_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/", arn))])
    error_message = "analyst_principal_arns must list specific IAM role or user ARNs (not an account root)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
