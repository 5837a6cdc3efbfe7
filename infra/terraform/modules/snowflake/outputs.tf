output "database" {
  description = "SNOWFLAKE_DATABASE."
  value       = snowflake_database.this.name
}

output "default_schema" {
  description = "SNOWFLAKE_SCHEMA (default schema of the pipeline connection; dbt models pick their layer schema)."
  value       = snowflake_schema.layer["CONSENTED"].name
}

output "schemas" {
  description = "Layer schemas by name."
  value       = { for k, s in snowflake_schema.layer : k => s.fully_qualified_name }
}

output "pipeline_role" {
  description = "SNOWFLAKE_ROLE of the runs."
  value       = snowflake_account_role.pipeline.name
}

output "analyst_role" {
  description = "Role analysts use (SEGMENTS and FEATURES, masked pseudonyms)."
  value       = snowflake_account_role.analyst.name
}

output "pipeline_warehouse" {
  description = "SNOWFLAKE_WAREHOUSE of the runs."
  value       = snowflake_warehouse.pipeline.name
}

output "analyst_warehouse" {
  description = "Warehouse analysts use."
  value       = snowflake_warehouse.analyst.name
}

output "pipeline_user" {
  description = "SNOWFLAKE_USER of the runs (its token goes into the Snowflake secret)."
  value       = snowflake_service_user.pipeline.name
}

output "pseudonym_tag" {
  description = "Fully qualified tag the pipeline sets on pseudonym columns (ALTER TABLE ... MODIFY COLUMN ... SET TAG <this> = 'pseudonym')."
  value       = snowflake_tag.pseudonym.fully_qualified_name
}
