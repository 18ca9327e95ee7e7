# Example platform: every data store encrypted with its own key from the
# GreenLang KMS hierarchy, and the greenlang-crypto settings exported for the
# application.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  tags = {
    Project     = "greenlang"
    Environment = "example"
  }
}

module "kms" {
  source = "../../modules/kms"

  providers = {
    aws    = aws
    aws.dr = aws.dr
  }

  name_prefix               = var.name_prefix
  key_administrator_arns    = var.key_administrator_arns
  break_glass_role_arn      = var.break_glass_role_arn
  cloudtrail_log_group_name = var.cloudtrail_log_group_name
  alarm_email_endpoints     = var.alarm_email_endpoints
  enable_dr_replicas        = true

  key_user_arns = {
    app = var.app_role_arns
  }

  tags = local.tags
}
