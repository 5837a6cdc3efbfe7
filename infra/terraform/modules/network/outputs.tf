output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "CIDR block of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "private_subnet_ids" {
  description = "Private subnets (EKS nodes and pods, RDS, internal ALB)."
  value       = [for s in aws_subnet.private : s.id]
}

output "public_subnet_ids" {
  description = "Public subnets (NAT gateways; an internet-facing ALB only if explicitly chosen)."
  value       = [for s in aws_subnet.public : s.id]
}

output "nat_public_ips" {
  description = "Egress IPs of the platform: allow-list them in the Snowflake network policy."
  value       = [for eip in aws_eip.nat : eip.public_ip]
}

output "alb_security_group_id" {
  description = "Security group of the Dagster UI load balancer."
  value       = aws_security_group.alb.id
}

output "node_security_group_id" {
  description = "Extra security group for EKS nodes (webserver NodePort from the UI ALB, collector NodePort from the collector ALB)."
  value       = aws_security_group.nodes.id
}

output "logs_kms_key_arn" {
  description = "KMS key for CloudWatch log groups."
  value       = aws_kms_key.logs.arn
}

output "webserver_node_port" {
  description = "NodePort the ALB forwards to (infra/helm/webserver-service.yaml)."
  value       = var.webserver_node_port
}

output "collector_alb_security_group_id" {
  description = "Security group of the event collector load balancer."
  value       = aws_security_group.collector_alb.id
}

output "collector_node_port" {
  description = "NodePort the collector ALB forwards to (infra/helm/collector.yaml)."
  value       = var.collector_node_port
}
