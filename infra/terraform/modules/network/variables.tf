variable "name" {
  description = "Name prefix of every resource (e.g. \"personalization-prod\")."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC. Private subnets get /19s (room for one IP per pod with the VPC CNI), public subnets /24s."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 16
    error_message = "vpc_cidr must be a valid IPv4 CIDR of size /16 or larger."
  }
}

variable "availability_zones" {
  description = "Availability zones to spread subnets over (2 or 3). Spot capacity is better with 3."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 3
    error_message = "Use 2 or 3 availability zones."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper, but egress fails with that zone) instead of one per zone."
  type        = bool
  default     = false
}

variable "cluster_name" {
  description = "EKS cluster name, used for the kubernetes.io/cluster/<name> subnet tags."
  type        = string
}

variable "ui_allowed_cidrs" {
  description = "CIDRs allowed to reach the Dagster UI load balancer on 443 (office / VPN ranges). The UI has no authentication of its own: never 0.0.0.0/0."
  type        = list(string)

  validation {
    condition     = length(var.ui_allowed_cidrs) > 0 && !contains(var.ui_allowed_cidrs, "0.0.0.0/0")
    error_message = "ui_allowed_cidrs must list specific ranges; 0.0.0.0/0 would expose an unauthenticated UI."
  }
}

variable "webserver_node_port" {
  description = "NodePort of the Dagster webserver Service (infra/helm/webserver-service.yaml); the only port the ALB may reach on the nodes."
  type        = number
  default     = 30080
}

variable "collector_allowed_cidrs" {
  description = "CIDRs allowed to reach the event collector load balancer on 443. SDKs in browsers and apps post from anywhere, hence the internet by default; narrow it when only your servers send."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.collector_allowed_cidrs) > 0 && alltrue([for c in var.collector_allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "collector_allowed_cidrs must list at least one valid IPv4 CIDR."
  }
}

variable "collector_node_port" {
  description = "NodePort of the event collector Service (infra/helm/collector.yaml, personalization-collector-alb); the only port the collector ALB may reach on the nodes."
  type        = number
  default     = 30088
}

variable "interface_endpoints" {
  description = "AWS services reached through interface VPC endpoints instead of the NAT gateway (IRSA token exchange, secrets, image pulls, logs)."
  type        = list(string)
  default     = ["sts", "secretsmanager", "ecr.api", "ecr.dkr", "logs"]
}

variable "flow_log_retention_days" {
  description = "Retention of VPC flow logs in CloudWatch Logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
