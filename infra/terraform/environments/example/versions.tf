terraform {
  # >= 1.11: write-only attributes (the Postgres password never enters state) and S3-native locking.
  required_version = ">= 1.11.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
    snowflake = {
      source  = "snowflakedb/snowflake"
      version = "~> 2.20"
    }
  }

  # Partial configuration: copy backend.hcl.example to backend.hcl (values from infra/terraform/bootstrap)
  # and run `terraform init -backend-config=backend.hcl`.
  backend "s3" {
    key          = "personalization/example/terraform.tfstate"
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = {
      Project     = "personalization"
      Environment = var.environment
      ManagedBy   = "terraform"
    }
  }
}

# Credentials come from the environment of the person/CI job applying (SNOWFLAKE_USER plus
# SNOWFLAKE_AUTHENTICATOR=SNOWFLAKE_JWT and SNOWFLAKE_PRIVATE_KEY, or another non-password method).
provider "snowflake" {
  organization_name = var.snowflake_organization_name
  account_name      = var.snowflake_account_name
  role              = var.snowflake_admin_role
}
