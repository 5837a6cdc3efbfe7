# The event collector's public entry point (infra/helm/collector.yaml): an internet-facing ALB terminating
# TLS on 443 with its own ACM certificate, forwarding to the collector NodePort Service
# (personalization-collector-alb) on the system nodes, exactly as the UI ALB (alb.tf) does for the webserver.
# A separate load balancer on purpose: the UI ALB is internal and admits the VPN only, while SDKs in browsers
# and apps post from anywhere. No HTTP listener; the security group (modules/network) admits 443 only.
#
# The ALB appends the client address to X-Forwarded-For and sets X-Forwarded-Proto; the collector trusts them
# from the VPC only (FORWARDED_ALLOW_IPS = VPC CIDR in the manifest), so it sees https and the real client IP.

resource "aws_lb" "collector" {
  #checkov:skip=CKV2_AWS_28:No WAF by default: AWS's managed rule groups block request bodies over 8 KB (SizeRestrictions_BODY) and the tracking API accepts 500 KB batches by design; abuse is bounded by write-key authentication, per-request size limits in the collector and the security group. Attach a web ACL with a rate-based rule where needed (docs/DEPLOYMENT.md).
  name                       = substr("${var.name}-collector", 0, 32)
  internal                   = var.collector_alb_internal
  load_balancer_type         = "application"
  security_groups            = [var.collector_alb_security_group_id]
  subnets                    = var.collector_alb_internal ? var.private_subnet_ids : var.public_subnet_ids
  drop_invalid_header_fields = true
  desync_mitigation_mode     = "strictest"
  enable_deletion_protection = true
  # Shorter than the collector's HTTP keep-alive (uvicorn's default, 5 s: collector/server.py sets none): the ALB
  # must close an idle connection to the pod before the pod does, or a request sent on a connection the pod is
  # closing comes back as a 502. SDK requests are short; a client silent for 4 s reconnects.
  idle_timeout = 4

  access_logs {
    bucket  = var.access_log_bucket
    prefix  = var.collector_access_log_prefix
    enabled = true
  }

  tags = var.tags
}

resource "aws_lb_target_group" "collector" {
  #checkov:skip=CKV_AWS_378:TLS terminates at the ALB; the hop to the collector NodePort stays inside the VPC, restricted to the collector ALB security group on one port, and the collector (uvicorn) does not serve TLS itself.
  name                 = substr("${var.name}-collector", 0, 32)
  port                 = var.collector_node_port
  protocol             = "HTTP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  # The collector's own health endpoint (personalization_assets/collector/app.py): 200 while its writer runs.
  health_check {
    path                = "/health"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags
}

resource "aws_lb_listener" "collector_https" {
  load_balancer_arn = aws_lb.collector.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.collector_certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.collector.arn
  }

  tags = var.tags
}

# /health and /metrics are for the ALB's target health checks (sent to the targets directly, not through this
# listener), the kubelet and Prometheus inside the cluster: the internet gets a 404. /health names the landing
# bucket (and so the account id); /metrics, the traffic and reject reasons.
resource "aws_lb_listener_rule" "collector_internal_paths" {
  listener_arn = aws_lb_listener.collector_https.arn
  priority     = 10

  action {
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      message_body = "{\"code\": \"not_found\", \"message\": \"not served on the public endpoint\"}"
      status_code  = "404"
    }
  }

  condition {
    path_pattern {
      values = var.collector_internal_paths
    }
  }

  tags = var.tags
}

# Every system node joins the target group; kube-proxy forwards the NodePort to the collector pod.
resource "aws_autoscaling_attachment" "collector" {
  #checkov:skip=CKV2_AWS_15:This ASG belongs to an EKS managed node group whose node health EKS manages; ELB health checks would make the ASG terminate every healthy node whenever the collector pod alone is down.
  autoscaling_group_name = aws_eks_node_group.system.resources[0].autoscaling_groups[0].name
  lb_target_group_arn    = aws_lb_target_group.collector.arn
}

################################################################################
# EBS CSI driver: the collector's state volume (a PersistentVolumeClaim) needs a CSI provisioner; EKS
# ships none by default. IRSA role kube-system/ebs-csi-controller-sa with AWS's managed driver policy.
################################################################################

data "aws_iam_policy_document" "ebs_csi_assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:kube-system:ebs-csi-controller-sa"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "ebs_csi" {
  name               = "${var.cluster_name}-ebs-csi"
  assume_role_policy = data.aws_iam_policy_document.ebs_csi_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "ebs_csi" {
  role       = aws_iam_role.ebs_csi.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
}

resource "aws_eks_addon" "ebs_csi" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "aws-ebs-csi-driver"
  service_account_role_arn    = aws_iam_role.ebs_csi.arn
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  tags                        = var.tags

  depends_on = [aws_eks_node_group.system, aws_iam_role_policy_attachment.ebs_csi]
}
