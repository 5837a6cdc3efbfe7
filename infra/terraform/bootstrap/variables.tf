variable "region" {
  description = "AWS Region of the state bucket (use the Region of the platform)."
  type        = string
}

variable "state_bucket_name" {
  description = "Globally unique name of the Terraform state bucket (e.g. \"acme-personalization-tfstate\")."
  type        = string
}

variable "state_version_retention_days" {
  description = "Days old state versions are kept (recovery from a bad apply)."
  type        = number
  default     = 90
}
