# Snowflake side of the warehouse layer.
#
# Layout (RAW is never loaded into Snowflake; personal data stays in the lake):
#   <database>.CONSENTED  pseudonymized, consented events/profiles loaded by the pipeline
#   <database>.FEATURES   feature tables (pipeline writes, analysts read)
#   <database>.SEGMENTS   dbt marts (pipeline writes, analysts read)
#   <database>.STAGING    dbt staging/intermediate models (pipeline only)
#   <database>.GOVERNANCE masking policy and tag; owned by the administrator that runs Terraform,
#                         so the pipeline cannot alter or drop its own guard rails.
#
# Masking: the PSEUDONYM tag carries the masking policy (tag-based masking). Every column the tag is
# set on shows its value to the pipeline role only; everyone else (analysts, SYSADMIN without
# switching role) sees '***MASKED***'. The pipeline sets the tag on pseudonym columns when it creates
# them (dbt post-hook / loader, see docs/DEPLOYMENT.md "Snowflake masking"), and the tag propagates
# to downstream objects (ON_DEPENDENCY_AND_DATA_MOVEMENT), so derived marts stay masked.
#
# Row access policy: deliberately none. Consent and erasure are enforced upstream (only consented,
# pseudonymized rows are ever loaded; erasures delete rows), and a row policy would need the
# suppression list inside Snowflake, i.e. privacy data leaving the lake. Analysts are limited by
# schema grants (SEGMENTS, FEATURES) instead.

locals {
  pipeline_role  = "${var.prefix}_PIPELINE"
  analyst_role   = "${var.prefix}_ANALYST"
  pipeline_user  = "${var.prefix}_PIPELINE_SVC"
  layer_schemas  = ["CONSENTED", "FEATURES", "SEGMENTS", "STAGING"]
  analyst_schema = ["SEGMENTS", "FEATURES"]
  masked_value   = "***MASKED***"
}

resource "snowflake_database" "this" {
  name                        = var.database_name
  comment                     = "Consent-aware personalization platform: curated, pseudonymized layers only (no raw personal data)."
  data_retention_time_in_days = var.time_travel_days
}

resource "snowflake_schema" "layer" {
  for_each = toset(local.layer_schemas)

  database            = snowflake_database.this.name
  name                = each.value
  with_managed_access = true
  is_transient        = false
  comment             = "Layer ${each.value} of the personalization platform (written by ${local.pipeline_role})."
}

resource "snowflake_schema" "governance" {
  database            = snowflake_database.this.name
  name                = "GOVERNANCE"
  with_managed_access = true
  is_transient        = false
  comment             = "Masking policies and tags; administered by Terraform only."
}

################################################################################
# Warehouses and cost guard
################################################################################

resource "snowflake_resource_monitor" "this" {
  name                      = "${var.prefix}_MONTHLY"
  credit_quota              = var.monthly_credit_quota
  frequency                 = "MONTHLY"
  notify_triggers           = [75, 90]
  suspend_trigger           = 100
  suspend_immediate_trigger = 110
}

resource "snowflake_warehouse" "pipeline" {
  name           = "${var.prefix}_PIPELINE_WH"
  warehouse_size = var.pipeline_warehouse_size
  # Multi-cluster settings only when asked for (they need Enterprise edition).
  min_cluster_count                   = var.pipeline_warehouse_max_clusters > 1 ? 1 : null
  max_cluster_count                   = var.pipeline_warehouse_max_clusters > 1 ? var.pipeline_warehouse_max_clusters : null
  scaling_policy                      = var.pipeline_warehouse_max_clusters > 1 ? "STANDARD" : null
  auto_suspend                        = var.auto_suspend_seconds
  auto_resume                         = "true"
  initially_suspended                 = true
  statement_timeout_in_seconds        = 3600
  statement_queued_timeout_in_seconds = 1800
  resource_monitor                    = snowflake_resource_monitor.this.fully_qualified_name
  comment                             = "Loads and dbt builds of the personalization pipeline."
}

resource "snowflake_warehouse" "analyst" {
  name                                = "${var.prefix}_ANALYST_WH"
  warehouse_size                      = var.analyst_warehouse_size
  auto_suspend                        = var.auto_suspend_seconds
  auto_resume                         = "true"
  initially_suspended                 = true
  statement_timeout_in_seconds        = 1800
  statement_queued_timeout_in_seconds = 600
  resource_monitor                    = snowflake_resource_monitor.this.fully_qualified_name
  comment                             = "Ad-hoc queries of analysts on SEGMENTS and FEATURES."
}

################################################################################
# Roles
################################################################################

resource "snowflake_account_role" "pipeline" {
  name    = local.pipeline_role
  comment = "Dagster/dbt pipeline: writes CONSENTED, FEATURES, SEGMENTS, STAGING; the only role that sees pseudonym columns."
}

resource "snowflake_account_role" "analyst" {
  name    = local.analyst_role
  comment = "Analysts: read SEGMENTS and FEATURES; pseudonym columns masked."
}

# Custom roles roll up to SYSADMIN (Snowflake's recommended hierarchy). SYSADMIN still sees masked
# values: the policy tests CURRENT_ROLE(), so seeing pseudonyms needs an explicit, logged USE ROLE.
resource "snowflake_grant_account_role" "to_sysadmin" {
  for_each = {
    pipeline = snowflake_account_role.pipeline.name
    analyst  = snowflake_account_role.analyst.name
  }

  role_name        = each.value
  parent_role_name = "SYSADMIN"
}

resource "snowflake_grant_account_role" "analyst_to_parents" {
  for_each = toset(var.analyst_parent_roles)

  role_name        = snowflake_account_role.analyst.name
  parent_role_name = each.value
}

################################################################################
# Grants: pipeline
################################################################################

resource "snowflake_grant_privileges_to_account_role" "pipeline_database" {
  account_role_name = snowflake_account_role.pipeline.name
  privileges        = ["USAGE"]

  on_account_object {
    object_type = "DATABASE"
    object_name = snowflake_database.this.name
  }
}

# CREATE STAGE / FILE FORMAT: write_pandas loads through a temporary stage and file format.
resource "snowflake_grant_privileges_to_account_role" "pipeline_schemas" {
  for_each = snowflake_schema.layer

  account_role_name = snowflake_account_role.pipeline.name
  privileges        = ["USAGE", "CREATE TABLE", "CREATE VIEW", "CREATE STAGE", "CREATE FILE FORMAT"]

  on_schema {
    schema_name = each.value.fully_qualified_name
  }
}

resource "snowflake_grant_privileges_to_account_role" "pipeline_warehouse" {
  account_role_name = snowflake_account_role.pipeline.name
  privileges        = ["USAGE", "OPERATE"]

  on_account_object {
    object_type = "WAREHOUSE"
    object_name = snowflake_warehouse.pipeline.name
  }
}

resource "snowflake_grant_privileges_to_account_role" "pipeline_governance_usage" {
  account_role_name = snowflake_account_role.pipeline.name
  privileges        = ["USAGE"]

  on_schema {
    schema_name = snowflake_schema.governance.fully_qualified_name
  }
}

# The pipeline may SET the pseudonym tag on the columns it creates (APPLY), not alter the policy.
resource "snowflake_grant_privileges_to_account_role" "pipeline_apply_tag" {
  account_role_name = snowflake_account_role.pipeline.name
  privileges        = ["APPLY"]

  on_schema_object {
    object_type = "TAG"
    object_name = snowflake_tag.pseudonym.fully_qualified_name
  }
}

################################################################################
# Grants: analyst (SEGMENTS and FEATURES only, read-only)
################################################################################

resource "snowflake_grant_privileges_to_account_role" "analyst_database" {
  account_role_name = snowflake_account_role.analyst.name
  privileges        = ["USAGE"]

  on_account_object {
    object_type = "DATABASE"
    object_name = snowflake_database.this.name
  }
}

resource "snowflake_grant_privileges_to_account_role" "analyst_schemas" {
  for_each = toset(local.analyst_schema)

  account_role_name = snowflake_account_role.analyst.name
  privileges        = ["USAGE"]

  on_schema {
    schema_name = snowflake_schema.layer[each.value].fully_qualified_name
  }
}

resource "snowflake_grant_privileges_to_account_role" "analyst_future_tables" {
  for_each = toset(local.analyst_schema)

  account_role_name = snowflake_account_role.analyst.name
  privileges        = ["SELECT"]

  on_schema_object {
    future {
      object_type_plural = "TABLES"
      in_schema          = snowflake_schema.layer[each.value].fully_qualified_name
    }
  }
}

resource "snowflake_grant_privileges_to_account_role" "analyst_future_views" {
  for_each = toset(local.analyst_schema)

  account_role_name = snowflake_account_role.analyst.name
  privileges        = ["SELECT"]

  on_schema_object {
    future {
      object_type_plural = "VIEWS"
      in_schema          = snowflake_schema.layer[each.value].fully_qualified_name
    }
  }
}

resource "snowflake_grant_privileges_to_account_role" "analyst_existing_tables" {
  for_each = toset(local.analyst_schema)

  account_role_name = snowflake_account_role.analyst.name
  privileges        = ["SELECT"]

  on_schema_object {
    all {
      object_type_plural = "TABLES"
      in_schema          = snowflake_schema.layer[each.value].fully_qualified_name
    }
  }
}

resource "snowflake_grant_privileges_to_account_role" "analyst_warehouse" {
  account_role_name = snowflake_account_role.analyst.name
  privileges        = ["USAGE"]

  on_account_object {
    object_type = "WAREHOUSE"
    object_name = snowflake_warehouse.analyst.name
  }
}

################################################################################
# Masking of pseudonym columns (tag-based)
################################################################################

resource "snowflake_masking_policy" "pseudonym" {
  database = snowflake_database.this.name
  schema   = snowflake_schema.governance.name
  name     = "MASK_PSEUDONYM"

  argument {
    name = "VAL"
    type = "VARCHAR"
  }

  body             = <<-SQL
    CASE
      WHEN CURRENT_ROLE() = '${local.pipeline_role}' THEN VAL
      WHEN VAL IS NULL THEN NULL
      ELSE '${local.masked_value}'
    END
  SQL
  return_data_type = "VARCHAR"
  comment          = "Pseudonymized identifiers (USER_PSEUDONYM, ANONYMOUS_PSEUDONYM, EMAIL_PSEUDONYM, ...) are visible to ${local.pipeline_role} only."
}

resource "snowflake_tag" "pseudonym" {
  database         = snowflake_database.this.name
  schema           = snowflake_schema.governance.name
  name             = "PSEUDONYM"
  comment          = "Set on every column holding a pseudonymized identifier; masks it for every role but ${local.pipeline_role}."
  masking_policies = [snowflake_masking_policy.pseudonym.fully_qualified_name]
  propagate        = "ON_DEPENDENCY_AND_DATA_MOVEMENT"
}

################################################################################
# Pipeline service user
################################################################################

resource "snowflake_network_policy" "pipeline" {
  name            = "${var.prefix}_PIPELINE_EGRESS"
  allowed_ip_list = var.allowed_ip_list
  comment         = "The pipeline user may only log in from the platform's NAT gateways."
}

# TYPE = SERVICE: no password sign-in, no MFA prompts. Authenticate with a programmatic access token
# (created out of band, stored in Secrets Manager as SNOWFLAKE_PASSWORD) or with key-pair auth.
resource "snowflake_service_user" "pipeline" {
  name              = local.pipeline_user
  comment           = "Dagster runs and dbt of the personalization platform."
  default_role      = snowflake_account_role.pipeline.name
  default_warehouse = snowflake_warehouse.pipeline.name
  default_namespace = "${snowflake_database.this.name}.${snowflake_schema.layer["CONSENTED"].name}"
  network_policy    = snowflake_network_policy.pipeline.name
  rsa_public_key    = var.pipeline_rsa_public_key
}

resource "snowflake_grant_account_role" "pipeline_user" {
  role_name = snowflake_account_role.pipeline.name
  user_name = snowflake_service_user.pipeline.name
}
