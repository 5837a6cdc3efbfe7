variable "name" {
  description = "Name prefix of every resource (e.g. \"personalization-prod\")."
  type        = string
}

variable "cluster_name" {
  description = "Name of the EKS cluster."
  type        = string
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the EKS control plane and managed node groups (keep within EKS standard support)."
  type        = string
  default     = "1.33"
}

variable "vpc_id" {
  description = "VPC of the cluster (modules/network)."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets for the control-plane ENIs, nodes, RDS and the internal ALB."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Public subnets, used only when alb_internal = false."
  type        = list(string)
  default     = []
}

variable "node_security_group_id" {
  description = "Extra node security group from modules/network (webserver NodePort from the ALB)."
  type        = string
}

variable "alb_security_group_id" {
  description = "Security group of the ALB from modules/network."
  type        = string
}

variable "logs_kms_key_arn" {
  description = "KMS key for the CloudWatch log groups (modules/network)."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the EKS control-plane and RDS log groups."
  type        = number
  default     = 365
}

variable "endpoint_public_access" {
  description = "Expose the Kubernetes API endpoint publicly (restricted to endpoint_public_access_cidrs). Default: private only, reach it over VPN / SSM."
  type        = bool
  default     = false
}

variable "endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach a public API endpoint (only if endpoint_public_access = true)."
  type        = list(string)
  default     = []

  validation {
    condition     = !contains(var.endpoint_public_access_cidrs, "0.0.0.0/0")
    error_message = "Do not open the Kubernetes API to 0.0.0.0/0."
  }
}

variable "system_instance_types" {
  description = "On-demand instance types of the system node group (webserver, daemon, code server, add-ons)."
  type        = list(string)
  default     = ["m6i.large", "m7i.large"]
}

variable "system_node_count" {
  description = "Min / desired / max size of the on-demand system node group."
  type = object({
    min     = number
    desired = number
    max     = number
  })
  default = { min = 2, desired = 2, max = 4 }
}

variable "run_instance_types" {
  description = "Spot instance types of the run node group. Several memory-optimized families of the same size give Spot more pools to draw from; each node fits one 16 GiB run pod with room for DaemonSets (r*.xlarge = 4 vCPU / 32 GiB fits one large or two default runs)."
  type        = list(string)
  default     = ["r6i.xlarge", "r6a.xlarge", "r5.xlarge", "r5a.xlarge", "r7i.xlarge", "r7a.xlarge"]
}

variable "run_node_max" {
  description = "Upper bound of the spot run node group; with the QueuedRunCoordinator limit it caps backfill fan-out and cost."
  type        = number
  default     = 20
}

variable "run_node_disk_gib" {
  description = "Root volume of run nodes (image layers plus DuckDB spill space for the pods' emptyDir)."
  type        = number
  default     = 200
}

variable "rds_instance_class" {
  description = "Instance class of the Dagster Postgres (run, event log and schedule storage)."
  type        = string
  default     = "db.m7g.large"
}

variable "rds_engine_version" {
  description = "PostgreSQL major version (minor versions are upgraded automatically in the maintenance window)."
  type        = string
  default     = "17"
}

variable "rds_allocated_storage_gib" {
  description = "Initial storage of the Dagster Postgres; storage autoscaling grows it up to rds_max_allocated_storage_gib."
  type        = number
  default     = 50
}

variable "rds_max_allocated_storage_gib" {
  description = "Ceiling of RDS storage autoscaling."
  type        = number
  default     = 500
}

variable "rds_multi_az" {
  description = "Standby replica in a second zone (recommended: a lost event log loses run history and the run queue)."
  type        = bool
  default     = true
}

variable "rds_backup_retention_days" {
  description = "Days of automated backups / point-in-time recovery of the Dagster Postgres."
  type        = number
  default     = 14

  validation {
    condition     = var.rds_backup_retention_days >= 7
    error_message = "Keep at least 7 days of backups."
  }
}

variable "db_password_version" {
  description = "Bump to rotate the Dagster Postgres password: a new random password is written to RDS and to Secrets Manager (write-only attributes, never stored in state). Then restart the Dagster pods."
  type        = number
  default     = 1
}

variable "alb_internal" {
  description = "Internal ALB (reachable from the VPC, VPN or peered networks only). Set false only together with an authenticating proxy or ALB OIDC authentication and WAF: the Dagster UI has no login."
  type        = bool
  default     = true
}

variable "certificate_arn" {
  description = "ACM certificate (in this Region) for the UI host name, served by the ALB on 443."
  type        = string
}

variable "access_log_bucket" {
  description = "Bucket receiving ALB access logs under alb/ (modules/storage log bucket)."
  type        = string
}

variable "webserver_node_port" {
  description = "NodePort of the webserver Service the ALB targets."
  type        = number
  default     = 30080
}

variable "collector_certificate_arn" {
  description = "ACM certificate (in this Region) for the event collector's host name, served by the collector ALB on 443."
  type        = string
}

variable "collector_alb_security_group_id" {
  description = "Security group of the collector ALB from modules/network."
  type        = string
}

variable "collector_alb_internal" {
  description = "Internal collector ALB (only server-side senders inside the VPC or peered networks). Default false: browser and app SDKs post from the internet."
  type        = bool
  default     = false
}

variable "collector_node_port" {
  description = "NodePort of the collector Service the collector ALB targets (infra/helm/collector.yaml)."
  type        = number
  default     = 30088
}

variable "collector_internal_paths" {
  description = "Paths of the collector the public listener answers with 404: its health and metrics endpoints (personalization_assets/collector/app.py), for the ALB health check, the kubelet and Prometheus only."
  type        = list(string)
  default     = ["/health", "/health/*", "/metrics", "/metrics/*"]
}

variable "collector_access_log_prefix" {
  description = "Prefix of the collector ALB's access logs in access_log_bucket (modules/storage output collector_alb_log_prefix, which expires it early)."
  type        = string
  default     = "alb-collector"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
