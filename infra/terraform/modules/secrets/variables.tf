variable "name" {
  description = "Name prefix of every resource (e.g. \"personalization-prod\")."
  type        = string
}

variable "recovery_window_days" {
  description = "Days a deleted secret can still be restored. A lost pseudonymization key makes every pseudonym unlinkable, so keep the maximum."
  type        = number
  default     = 30

  validation {
    condition     = var.recovery_window_days >= 7 && var.recovery_window_days <= 30
    error_message = "recovery_window_days must be 7-30."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
