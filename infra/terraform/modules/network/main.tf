# VPC for the platform: private subnets for EKS nodes, pods and RDS; public subnets only for the NAT
# gateways (and an internet-facing ALB if one is ever wanted; the default ALB is internal). S3 traffic
# stays on the gateway endpoint; STS, Secrets Manager, ECR and CloudWatch Logs go through interface
# endpoints. Nothing in the VPC accepts traffic from the internet except two load balancers on 443:
# the Dagster UI ALB from var.ui_allowed_cidrs, and the event collector ALB from var.collector_allowed_cidrs.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.region
  azs        = { for index, az in var.availability_zones : az => index }
  nat_azs    = var.single_nat_gateway ? { (var.availability_zones[0]) = 0 } : local.azs
}

################################################################################
# KMS key for CloudWatch Logs (flow logs here; EKS control-plane and RDS logs in modules/eks)
################################################################################

data "aws_iam_policy_document" "logs_key" {
  #checkov:skip=CKV_AWS_109:KMS key policy: Resource "*" denotes this key only; the root statement is AWS's default delegation to IAM.
  #checkov:skip=CKV_AWS_111:KMS key policy: Resource "*" denotes this key only; the CloudWatch Logs grant is limited by encryption context.
  #checkov:skip=CKV_AWS_356:KMS key policy: Resource "*" is the only valid resource in a key policy.
  statement {
    sid       = "EnableIamPoliciesOfThisAccount"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "AllowCloudWatchLogsOfThisAccount"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "logs" {
  description             = "${var.name}: encrypts CloudWatch log groups (VPC flow logs, EKS control plane, RDS)"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.logs_key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "logs" {
  name          = "alias/${var.name}-logs"
  target_key_id = aws_kms_key.logs.key_id
}

################################################################################
# VPC, subnets, gateways, routes
################################################################################

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(var.tags, { Name = var.name })
}

# The default security group of the VPC must not be usable: no rules at all.
resource "aws_default_security_group" "default" {
  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "${var.name}-default-unused" })
}

resource "aws_subnet" "private" {
  for_each = local.azs

  vpc_id                  = aws_vpc.this.id
  availability_zone       = each.key
  cidr_block              = cidrsubnet(var.vpc_cidr, 3, each.value)
  map_public_ip_on_launch = false

  tags = merge(var.tags, {
    Name                                        = "${var.name}-private-${each.key}"
    Tier                                        = "private"
    "kubernetes.io/role/internal-elb"           = "1"
    "kubernetes.io/cluster/${var.cluster_name}" = "shared"
  })
}

resource "aws_subnet" "public" {
  for_each = local.azs

  vpc_id                  = aws_vpc.this.id
  availability_zone       = each.key
  cidr_block              = cidrsubnet(var.vpc_cidr, 8, 200 + each.value)
  map_public_ip_on_launch = false

  tags = merge(var.tags, {
    Name                                        = "${var.name}-public-${each.key}"
    Tier                                        = "public"
    "kubernetes.io/role/elb"                    = "1"
    "kubernetes.io/cluster/${var.cluster_name}" = "shared"
  })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = var.name })
}

resource "aws_eip" "nat" {
  for_each = local.nat_azs

  domain = "vpc"
  tags   = merge(var.tags, { Name = "${var.name}-nat-${each.key}" })
}

resource "aws_nat_gateway" "this" {
  for_each = local.nat_azs

  allocation_id = aws_eip.nat[each.key].id
  subnet_id     = aws_subnet.public[each.key].id
  tags          = merge(var.tags, { Name = "${var.name}-${each.key}" })

  depends_on = [aws_internet_gateway.this]
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "${var.name}-public" })
}

resource "aws_route" "public_internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "public" {
  for_each = aws_subnet.public

  subnet_id      = each.value.id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table" "private" {
  for_each = local.azs

  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "${var.name}-private-${each.key}" })
}

resource "aws_route" "private_nat" {
  for_each = local.azs

  route_table_id         = aws_route_table.private[each.key].id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = var.single_nat_gateway ? aws_nat_gateway.this[var.availability_zones[0]].id : aws_nat_gateway.this[each.key].id
}

resource "aws_route_table_association" "private" {
  for_each = aws_subnet.private

  subnet_id      = each.value.id
  route_table_id = aws_route_table.private[each.key].id
}

################################################################################
# VPC endpoints: S3 (gateway, free, keeps lake traffic off the NAT) and interface endpoints
################################################################################

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${local.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [for rt in aws_route_table.private : rt.id]
  tags              = merge(var.tags, { Name = "${var.name}-s3" })
}

resource "aws_security_group" "endpoints" {
  name        = "${var.name}-vpc-endpoints"
  description = "Interface VPC endpoints: HTTPS from inside the VPC only"
  vpc_id      = aws_vpc.this.id
  tags        = merge(var.tags, { Name = "${var.name}-vpc-endpoints" })
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_https" {
  security_group_id = aws_security_group.endpoints.id
  description       = "HTTPS to AWS APIs from workloads in the VPC"
  cidr_ipv4         = var.vpc_cidr
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_endpoint" "interface" {
  for_each = toset(var.interface_endpoints)

  vpc_id              = aws_vpc.this.id
  service_name        = "com.amazonaws.${local.region}.${each.value}"
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = true
  subnet_ids          = [for s in aws_subnet.private : s.id]
  security_group_ids  = [aws_security_group.endpoints.id]
  tags                = merge(var.tags, { Name = "${var.name}-${each.value}" })
}

################################################################################
# Security groups of the Dagster entry point
################################################################################

# The only door into the platform: HTTPS on 443 from the allowed ranges to the ALB.
resource "aws_security_group" "alb" {
  #checkov:skip=CKV2_AWS_5:Attached to the ALB in modules/eks (aws_lb.ui) through the alb_security_group_id output; checkov's graph does not follow module variables.
  name        = "${var.name}-dagster-alb"
  description = "Dagster UI load balancer: HTTPS 443 from allowed ranges; forwards only to the webserver NodePort"
  vpc_id      = aws_vpc.this.id
  tags        = merge(var.tags, { Name = "${var.name}-dagster-alb" })
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = toset(var.ui_allowed_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS to the Dagster UI from ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_webserver" {
  security_group_id            = aws_security_group.alb.id
  description                  = "ALB to the Dagster webserver NodePort on the nodes"
  referenced_security_group_id = aws_security_group.nodes.id
  ip_protocol                  = "tcp"
  from_port                    = var.webserver_node_port
  to_port                      = var.webserver_node_port
}

# Extra security group of the EKS nodes (besides the cluster security group EKS manages): opens the
# webserver NodePort to the UI ALB and the collector NodePort to the collector ALB, nothing else.
resource "aws_security_group" "nodes" {
  #checkov:skip=CKV2_AWS_5:Attached to every EKS node through the launch templates in modules/eks (aws_launch_template.node); checkov's graph does not follow module variables.
  name        = "${var.name}-eks-nodes-extra"
  description = "EKS nodes: webserver NodePort from the ALB only"
  vpc_id      = aws_vpc.this.id
  tags        = merge(var.tags, { Name = "${var.name}-eks-nodes-extra" })
}

resource "aws_vpc_security_group_ingress_rule" "nodes_from_alb" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "Dagster webserver NodePort from the ALB"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = var.webserver_node_port
  to_port                      = var.webserver_node_port
}

################################################################################
# Security groups of the event collector's entry point (public: SDKs in browsers and apps post to it)
################################################################################

# HTTPS on 443 from var.collector_allowed_cidrs (default: the internet) to the collector ALB, which forwards
# only to the collector NodePort. The collector authenticates every write (write keys) and every preference
# change (signed subject tokens, same-origin posts); the UI ALB above stays separate and internal.
resource "aws_security_group" "collector_alb" {
  #checkov:skip=CKV2_AWS_5:Attached to the collector ALB in modules/eks (aws_lb.collector) through the collector_alb_security_group_id output; checkov's graph does not follow module variables.
  name        = "${var.name}-collector-alb"
  description = "Event collector load balancer: HTTPS 443 from collector_allowed_cidrs; forwards only to the collector NodePort"
  vpc_id      = aws_vpc.this.id
  tags        = merge(var.tags, { Name = "${var.name}-collector-alb" })
}

resource "aws_vpc_security_group_ingress_rule" "collector_alb_https" {
  for_each = toset(var.collector_allowed_cidrs)

  security_group_id = aws_security_group.collector_alb.id
  description       = "HTTPS to the event collector from ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "collector_alb_to_collector" {
  security_group_id            = aws_security_group.collector_alb.id
  description                  = "Collector ALB to the collector NodePort on the nodes"
  referenced_security_group_id = aws_security_group.nodes.id
  ip_protocol                  = "tcp"
  from_port                    = var.collector_node_port
  to_port                      = var.collector_node_port
}

resource "aws_vpc_security_group_ingress_rule" "nodes_from_collector_alb" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "Event collector NodePort from the collector ALB"
  referenced_security_group_id = aws_security_group.collector_alb.id
  ip_protocol                  = "tcp"
  from_port                    = var.collector_node_port
  to_port                      = var.collector_node_port
}

################################################################################
# VPC flow logs (all traffic, CloudWatch Logs, KMS-encrypted)
################################################################################

resource "aws_cloudwatch_log_group" "flow_logs" {
  name              = "/${var.name}/vpc-flow-logs"
  retention_in_days = var.flow_log_retention_days
  kms_key_id        = aws_kms_key.logs.arn
  tags              = var.tags
}

data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "flow_logs" {
  name               = "${var.name}-vpc-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "flow_logs" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.flow_logs.arn}:*"]
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  name   = "write-flow-logs"
  role   = aws_iam_role.flow_logs.id
  policy = data.aws_iam_policy_document.flow_logs.json
}

resource "aws_flow_log" "this" {
  vpc_id               = aws_vpc.this.id
  traffic_type         = "ALL"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow_logs.arn
  iam_role_arn         = aws_iam_role.flow_logs.arn
  tags                 = var.tags
}
