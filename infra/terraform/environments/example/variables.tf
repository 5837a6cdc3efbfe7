variable "aws_region" {
  description = "AWS Region of the whole platform (buckets, EKS, RDS). Pick one close to the Snowflake account's Region."
  type        = string
}

variable "environment" {
  description = "Environment name (prod, staging, ...), part of every resource name."
  type        = string
  default     = "prod"
}

variable "availability_zones" {
  description = "Two or three availability zones of aws_region."
  type        = list(string)
}

variable "vpc_cidr" {
  description = "CIDR block of the platform VPC."
  type        = string
  default     = "10.40.0.0/16"
}

variable "single_nat_gateway" {
  description = "Use one NAT gateway instead of one per zone (cheaper, less available)."
  type        = bool
  default     = false
}

variable "landing_prefix" {
  description = "Prefix of the landing area inside the landing bucket ('' or ending with '/')."
  type        = string
  default     = ""
}

variable "lake_prefix" {
  description = "Prefix of the lake inside the lake bucket ('' or ending with '/')."
  type        = string
  default     = ""
}

variable "ledger_prefix" {
  description = "Prefix of the append-only logs inside the ledger bucket (S3 Object Lock) ('' or ending with '/')."
  type        = string
  default     = ""
}

variable "cdp_writer_principal_arns" {
  description = "IAM principals of the CDP S3 destination that writes into the landing bucket."
  type        = list(string)
  default     = []
}

variable "break_glass_role_arns" {
  description = "Roles (besides the run role) allowed to read the PII tiers in an incident, e.g. an audited break-glass role."
  type        = list(string)
  default     = []
}

variable "analyst_principal_arns" {
  description = "IAM principals allowed to assume the analyst role (curated lake tiers only)."
  type        = list(string)
}

variable "ui_allowed_cidrs" {
  description = "Ranges (office, VPN) allowed to open the Dagster UI over HTTPS."
  type        = list(string)
}

variable "ui_domain_name" {
  description = "Host name of the Dagster UI, e.g. dagster.data.example.com."
  type        = string
}

variable "collector_domain_name" {
  description = "Public host name of the event collector and preference center, e.g. collect.example.com (SDKs post to https://<this>/v1/...)."
  type        = string
}

variable "collector_allowed_cidrs" {
  description = "Ranges allowed to reach the event collector over HTTPS. Browser and app SDKs post from anywhere: the internet by default."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone of ui_domain_name and collector_domain_name (certificate validation and the alias records)."
  type        = string
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "run_node_max" {
  description = "Maximum spot nodes for run pods."
  type        = number
  default     = 20
}

variable "db_password_version" {
  description = "Bump to rotate the Dagster Postgres password (see docs/DEPLOYMENT.md)."
  type        = number
  default     = 1
}

variable "snowflake_organization_name" {
  description = "Snowflake organization name (SNOWFLAKE_ACCOUNT is <organization>-<account>)."
  type        = string
}

variable "snowflake_account_name" {
  description = "Snowflake account name."
  type        = string
}

variable "snowflake_admin_role" {
  description = "Role Terraform uses in Snowflake. It creates a database, warehouses, a resource monitor, roles, a network policy and a user, which needs ACCOUNTADMIN or an equivalent custom role."
  type        = string
  default     = "ACCOUNTADMIN"
}

variable "snowflake_monthly_credit_quota" {
  description = "Monthly Snowflake credit budget of the platform's warehouses."
  type        = number
  default     = 100
}

variable "snowflake_analyst_parent_roles" {
  description = "Existing Snowflake roles (SSO groups) that get the analyst role."
  type        = list(string)
  default     = []
}

variable "container_image_repository" {
  description = "ECR repository name of the user-code image (infra/docker/Dockerfile)."
  type        = string
  default     = "personalization/dagster-user-code"
}
