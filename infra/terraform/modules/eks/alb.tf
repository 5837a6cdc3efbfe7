# Entry point of the Dagster UI: an ALB terminating TLS on 443 with the ACM certificate (TLS 1.2+ /
# 1.3 policy), forwarding to the webserver NodePort Service (infra/helm/webserver-service.yaml) on the
# on-demand system nodes. Internal by default: the Dagster UI has no authentication of its own.
# No HTTP listener exists, and the ALB security group only admits 443 from the allowed ranges.

resource "aws_lb" "ui" {
  name                       = substr("${var.name}-ui", 0, 32)
  internal                   = var.alb_internal
  load_balancer_type         = "application"
  security_groups            = [var.alb_security_group_id]
  subnets                    = var.alb_internal ? var.private_subnet_ids : var.public_subnet_ids
  drop_invalid_header_fields = true
  desync_mitigation_mode     = "strictest"
  enable_deletion_protection = true
  idle_timeout               = 120

  access_logs {
    bucket  = var.access_log_bucket
    prefix  = "alb"
    enabled = true
  }

  tags = var.tags
}

resource "aws_lb_target_group" "webserver" {
  #checkov:skip=CKV_AWS_378:TLS terminates at the ALB; the hop to the webserver NodePort stays inside the VPC, restricted to the ALB security group on one port, and the Dagster webserver does not serve TLS itself.
  name                 = substr("${var.name}-webserver", 0, 32)
  port                 = var.webserver_node_port
  protocol             = "HTTP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    path                = "/server_info"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.ui.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.webserver.arn
  }

  tags = var.tags
}

# Every system node joins the target group; kube-proxy forwards the NodePort to the webserver pod.
resource "aws_autoscaling_attachment" "webserver" {
  #checkov:skip=CKV2_AWS_15:This ASG belongs to an EKS managed node group whose node health EKS manages; ELB health checks would make the ASG terminate every healthy node whenever the webserver pod alone is down.
  autoscaling_group_name = aws_eks_node_group.system.resources[0].autoscaling_groups[0].name
  lb_target_group_arn    = aws_lb_target_group.webserver.arn
}
