output "cluster_name" {
  description = "Name of the EKS cluster (aws eks update-kubeconfig --name <this>)."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_security_group_id" {
  description = "Security group EKS attaches to the control plane and nodes."
  value       = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

output "oidc_provider_arn" {
  description = "IAM OIDC provider of the cluster (IRSA)."
  value       = aws_iam_openid_connect_provider.eks.arn
}

output "oidc_issuer" {
  description = "OIDC issuer without https:// (condition keys of IRSA trust policies)."
  value       = local.oidc_issuer
}

output "cluster_autoscaler_role_arn" {
  description = "IRSA role for kube-system/cluster-autoscaler."
  value       = aws_iam_role.cluster_autoscaler.arn
}

output "run_node_selector" {
  description = "Node selector of run pods (runLauncher...runK8sConfig.podSpecConfig.nodeSelector in the Helm values)."
  value       = { (local.pool_label_key) = "runs" }
}

output "run_toleration" {
  description = "Toleration run pods need for the spot run nodes."
  value       = { key = local.run_taint_key, operator = "Equal", value = "true", effect = "NoSchedule" }
}

output "system_node_selector" {
  description = "Node selector of the webserver, daemon and code server."
  value       = { (local.pool_label_key) = "system" }
}

output "postgres_host" {
  description = "Hostname of the Dagster Postgres: postgresql.postgresqlHost in the Helm values, DAGSTER_PG_HOST for dagster.prod.yaml."
  value       = aws_db_instance.dagster.address
}

output "postgres_port" {
  description = "Port of the Dagster Postgres."
  value       = aws_db_instance.dagster.port
}

output "postgres_db_name" {
  description = "Database name of the Dagster storage."
  value       = aws_db_instance.dagster.db_name
}

output "postgres_username" {
  description = "User of the Dagster storage."
  value       = aws_db_instance.dagster.username
}

output "postgres_password_secret_arn" {
  description = "Secrets Manager secret holding the Postgres password."
  value       = aws_secretsmanager_secret.db.arn
}

output "postgres_password_secret_name" {
  description = "Name of the Postgres password secret (remoteRef.key of the ExternalSecret)."
  value       = aws_secretsmanager_secret.db.name
}

output "platform_kms_key_arn" {
  description = "KMS key of EKS secrets, RDS and the Postgres password secret."
  value       = aws_kms_key.platform.arn
}

output "alb_dns_name" {
  description = "DNS name of the UI load balancer (alias record target)."
  value       = aws_lb.ui.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the UI load balancer (alias record)."
  value       = aws_lb.ui.zone_id
}

output "collector_alb_dns_name" {
  description = "DNS name of the event collector load balancer (alias record target)."
  value       = aws_lb.collector.dns_name
}

output "collector_alb_zone_id" {
  description = "Hosted zone of the event collector load balancer (alias record)."
  value       = aws_lb.collector.zone_id
}

output "ebs_csi_role_arn" {
  description = "IRSA role of the EBS CSI driver add-on (kube-system/ebs-csi-controller-sa): provisions the collector's state volume."
  value       = aws_iam_role.ebs_csi.arn
}
