output "run_role_arn" {
  description = "IRSA role of the run service account: eks.amazonaws.com/role-arn annotation of dagster-user-deployments.serviceAccount in the Helm values."
  value       = aws_iam_role.run.arn
}

output "analyst_role_arn" {
  description = "Read-only analyst role on consented/ and features/."
  value       = aws_iam_role.analyst.arn
}

output "db_secret_reader_role_arn" {
  description = "IRSA role of the External Secrets service account that reads the Postgres password."
  value       = aws_iam_role.db_secret_reader.arn
}

output "run_service_account_name" {
  description = "Kubernetes service account bound to the run role."
  value       = var.run_service_account_name
}

output "collector_role_arn" {
  description = "IRSA role of the collector service account: eks.amazonaws.com/role-arn of the ServiceAccount in infra/helm/collector.yaml."
  value       = aws_iam_role.collector.arn
}

output "collector_service_account_name" {
  description = "Kubernetes service account bound to the collector role."
  value       = var.collector_service_account_name
}
