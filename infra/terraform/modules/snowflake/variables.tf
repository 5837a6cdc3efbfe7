variable "prefix" {
  description = "Upper-case prefix of every Snowflake object (e.g. \"PERSONALIZATION\")."
  type        = string
  default     = "PERSONALIZATION"

  validation {
    condition     = can(regex("^[A-Z][A-Z0-9_]{1,40}$", var.prefix))
    error_message = "prefix must be upper case letters, digits and underscores."
  }
}

variable "database_name" {
  description = "Database holding the warehouse layers (SNOWFLAKE_DATABASE)."
  type        = string
  default     = "PERSONALIZATION"
}

variable "time_travel_days" {
  description = "Time Travel retention of the database. Erased or expired rows stay recoverable this long (plus 7 days of Fail-safe for permanent tables), so keep it short: erasure requests must take effect within a month."
  type        = number
  default     = 1

  validation {
    condition     = var.time_travel_days >= 0 && var.time_travel_days <= 7
    error_message = "time_travel_days must be 0-7 (erasure deadline)."
  }
}

variable "pipeline_warehouse_size" {
  description = "Size of the pipeline warehouse (dbt builds, loads). XSMALL handles tens of millions of rows per day; see docs/DEPLOYMENT.md, Scaling."
  type        = string
  default     = "XSMALL"
}

variable "pipeline_warehouse_max_clusters" {
  description = "Maximum clusters of the pipeline warehouse (multi-cluster needs Enterprise edition; 1 = single cluster). Raise when many partitions load concurrently during backfills and queries queue."
  type        = number
  default     = 1
}

variable "analyst_warehouse_size" {
  description = "Size of the analyst warehouse (separate from the pipeline so ad-hoc queries never slow loads and costs are attributable)."
  type        = string
  default     = "XSMALL"
}

variable "auto_suspend_seconds" {
  description = "Seconds of inactivity before a warehouse suspends (billing is per second after the first minute)."
  type        = number
  default     = 60
}

variable "monthly_credit_quota" {
  description = "Credits per month for both warehouses; notify at 75/90 %, suspend at 100 %, suspend immediately at 110 %."
  type        = number
  default     = 100
}

variable "allowed_ip_list" {
  description = "Egress IPs allowed to log in as the pipeline service user (the NAT gateway IPs from modules/network). Programmatic access tokens require a network policy."
  type        = list(string)

  validation {
    condition     = length(var.allowed_ip_list) > 0 && !contains(var.allowed_ip_list, "0.0.0.0/0")
    error_message = "allowed_ip_list must list the platform's egress IPs, not 0.0.0.0/0."
  }
}

variable "pipeline_rsa_public_key" {
  description = "Optional RSA public key (one line, no PEM header) for key-pair authentication of the pipeline user. The default path is a programmatic access token stored in Secrets Manager."
  type        = string
  default     = null
}

variable "analyst_parent_roles" {
  description = "Existing account roles (e.g. provisioned by SSO/SCIM for the analytics team) that receive the analyst role."
  type        = list(string)
  default     = []
}
