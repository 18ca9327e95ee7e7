# GreenLang KMS key hierarchy.
#
# One customer managed key per purpose. The master key is the root of the
# hierarchy and protects platform-level data (the alarm topic); every other key
# is scoped to one AWS service through kms:ViaService, and the app key wraps
# the data encryption keys of greenlang-crypto under a mandatory encryption
# context. All keys are multi-Region so that a replica in the DR region can
# decrypt what the primary encrypted.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_region" "dr" {
  provider = aws.dr
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  dr_region  = data.aws_region.dr.name

  # Regions in which the keys can be used; kms:ViaService names both so that
  # a single policy serves the primary key and its replica.
  key_regions = var.enable_dr_replicas ? distinct([local.region, local.dr_region]) : [local.region]

  account_root_arn = "arn:${local.partition}:iam::${local.account_id}:root"

  # The key hierarchy. `service` is the AWS service that may use the key on a
  # principal's behalf (kms:ViaService); the app key has none because the
  # application calls KMS directly.
  key_purposes = {
    master = {
      description = "GreenLang master CMK: root of the key hierarchy, platform-level data (alarm topic)"
      service     = "sns"
    }
    database = {
      description = "GreenLang database CMK: Aurora and RDS storage encryption"
      service     = "rds"
    }
    storage = {
      description = "GreenLang storage CMK: S3 SSE-KMS"
      service     = "s3"
    }
    cache = {
      description = "GreenLang cache CMK: ElastiCache at-rest encryption"
      service     = "elasticache"
    }
    secrets = {
      description = "GreenLang secrets CMK: Secrets Manager"
      service     = "secretsmanager"
    }
    eks = {
      description = "GreenLang EKS CMK: envelope encryption of Kubernetes secrets"
      service     = "eks"
    }
    app = {
      description = "GreenLang application CMK: wraps greenlang-crypto data encryption keys"
      service     = null
    }
  }

  service_key_purposes = { for purpose, cfg in local.key_purposes : purpose => cfg if cfg.service != null }

  key_users = {
    for purpose in keys(local.key_purposes) :
    purpose => length(lookup(var.key_user_arns, purpose, [])) > 0 ? var.key_user_arns[purpose] : [local.account_root_arn]
  }

  # Principals that are both administrators and users would break the
  # separation of duties the key policies are built on.
  admin_user_overlap = setintersection(toset(var.key_administrator_arns), toset(flatten(values(var.key_user_arns))))

  common_tags = merge(var.tags, {
    "ManagedBy" = "terraform"
    "Module"    = "greenlang-kms"
  })
}

resource "aws_kms_key" "this" {
  for_each = local.key_purposes

  description              = each.value.description
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  multi_region             = true
  is_enabled               = true

  enable_key_rotation     = true
  rotation_period_in_days = var.rotation_period_in_days
  deletion_window_in_days = var.deletion_window_in_days

  policy                             = local.key_policies[each.key]
  bypass_policy_lockout_safety_check = false

  tags = merge(local.common_tags, {
    "Name"    = "${var.name_prefix}-${each.key}"
    "Purpose" = each.key
  })

  lifecycle {
    precondition {
      condition     = length(local.admin_user_overlap) == 0
      error_message = "A principal is listed both in key_administrator_arns and key_user_arns; administrators must not use the keys."
    }

    precondition {
      condition     = !contains(var.key_administrator_arns, var.break_glass_role_arn)
      error_message = "break_glass_role_arn must not also be a day-to-day key administrator."
    }
  }
}

resource "aws_kms_alias" "this" {
  for_each = local.key_purposes

  name          = "alias/${var.name_prefix}-${each.key}"
  target_key_id = aws_kms_key.this[each.key].key_id
}

# Replicas share key material and rotation with their primary key; rotation is
# configured on the primary only.
resource "aws_kms_replica_key" "dr" {
  for_each = var.enable_dr_replicas ? local.key_purposes : {}
  provider = aws.dr

  description                        = "${each.value.description} (DR replica)"
  primary_key_arn                    = aws_kms_key.this[each.key].arn
  deletion_window_in_days            = var.deletion_window_in_days
  enabled                            = true
  policy                             = local.key_policies[each.key]
  bypass_policy_lockout_safety_check = false

  tags = merge(local.common_tags, {
    "Name"    = "${var.name_prefix}-${each.key}"
    "Purpose" = each.key
    "Replica" = "true"
  })
}

resource "aws_kms_alias" "dr" {
  for_each = var.enable_dr_replicas ? local.key_purposes : {}
  provider = aws.dr

  name          = "alias/${var.name_prefix}-${each.key}"
  target_key_id = aws_kms_replica_key.dr[each.key].key_id
}

# ---------------------------------------------------------------------------
# Alarm topic, encrypted with the master key.
# ---------------------------------------------------------------------------

resource "aws_sns_topic" "kms_alarms" {
  name              = "${var.name_prefix}-kms-alarms"
  kms_master_key_id = aws_kms_key.this["master"].arn
  tags              = local.common_tags
}

data "aws_iam_policy_document" "kms_alarms_topic" {
  statement {
    sid       = "AllowCloudWatchAlarmsToPublish"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.kms_alarms.arn]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_sns_topic_policy" "kms_alarms" {
  arn    = aws_sns_topic.kms_alarms.arn
  policy = data.aws_iam_policy_document.kms_alarms_topic.json
}

resource "aws_sns_topic_subscription" "kms_alarms_email" {
  for_each = toset(var.alarm_email_endpoints)

  topic_arn = aws_sns_topic.kms_alarms.arn
  protocol  = "email"
  endpoint  = each.value
}

# ---------------------------------------------------------------------------
# CloudTrail -> CloudWatch Logs metric filters and alarms.
# ---------------------------------------------------------------------------

resource "aws_cloudwatch_log_metric_filter" "kms_decrypt_failures" {
  name           = "${var.name_prefix}-kms-decrypt-failures"
  log_group_name = var.cloudtrail_log_group_name
  pattern        = "{ ($.eventSource = \"kms.amazonaws.com\") && ($.eventName = \"Decrypt\") && ($.errorCode = \"*\") }"

  metric_transformation {
    name          = "KmsDecryptFailures"
    namespace     = var.alarm_namespace
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_log_metric_filter" "kms_key_disabled" {
  name           = "${var.name_prefix}-kms-disable-key"
  log_group_name = var.cloudtrail_log_group_name
  pattern        = "{ ($.eventSource = \"kms.amazonaws.com\") && ($.eventName = \"DisableKey\") }"

  metric_transformation {
    name          = "KmsDisableKeyCalls"
    namespace     = var.alarm_namespace
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_log_metric_filter" "kms_key_deletion_scheduled" {
  name           = "${var.name_prefix}-kms-schedule-key-deletion"
  log_group_name = var.cloudtrail_log_group_name
  pattern        = "{ ($.eventSource = \"kms.amazonaws.com\") && ($.eventName = \"ScheduleKeyDeletion\") }"

  metric_transformation {
    name          = "KmsScheduleKeyDeletionCalls"
    namespace     = var.alarm_namespace
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_log_metric_filter" "kms_call_volume" {
  name           = "${var.name_prefix}-kms-call-volume"
  log_group_name = var.cloudtrail_log_group_name
  pattern        = "{ $.eventSource = \"kms.amazonaws.com\" }"

  metric_transformation {
    name          = "KmsApiCalls"
    namespace     = var.alarm_namespace
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_metric_alarm" "kms_decrypt_failures" {
  alarm_name          = "${var.name_prefix}-kms-decrypt-failures"
  alarm_description   = "kms:Decrypt calls are failing (wrong encryption context, tampered wrapped DEK, or denied access)."
  namespace           = var.alarm_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.kms_decrypt_failures.metric_transformation[0].name
  statistic           = "Sum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = var.decrypt_failure_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [aws_sns_topic.kms_alarms.arn]
  ok_actions          = [aws_sns_topic.kms_alarms.arn]
  tags                = local.common_tags
}

resource "aws_cloudwatch_metric_alarm" "kms_key_disabled" {
  alarm_name          = "${var.name_prefix}-kms-disable-key"
  alarm_description   = "kms:DisableKey was called in this account. Only the break-glass role may do so; confirm it was intended."
  namespace           = var.alarm_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.kms_key_disabled.metric_transformation[0].name
  statistic           = "Sum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [aws_sns_topic.kms_alarms.arn]
  ok_actions          = [aws_sns_topic.kms_alarms.arn]
  tags                = local.common_tags
}

resource "aws_cloudwatch_metric_alarm" "kms_key_deletion_scheduled" {
  alarm_name          = "${var.name_prefix}-kms-schedule-key-deletion"
  alarm_description   = "kms:ScheduleKeyDeletion was called in this account. Cancel with kms:CancelKeyDeletion within the deletion window if it was not intended."
  namespace           = var.alarm_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.kms_key_deletion_scheduled.metric_transformation[0].name
  statistic           = "Sum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [aws_sns_topic.kms_alarms.arn]
  ok_actions          = [aws_sns_topic.kms_alarms.arn]
  tags                = local.common_tags
}

resource "aws_cloudwatch_metric_alarm" "kms_call_volume_anomaly" {
  alarm_name          = "${var.name_prefix}-kms-call-volume-anomaly"
  alarm_description   = "KMS API call volume is above its anomaly detection band (possible bulk exfiltration or a runaway client bypassing the DEK cache)."
  comparison_operator = "GreaterThanUpperThreshold"
  evaluation_periods  = 3
  datapoints_to_alarm = 2
  threshold_metric_id = "band"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = [aws_sns_topic.kms_alarms.arn]
  ok_actions          = [aws_sns_topic.kms_alarms.arn]
  tags                = local.common_tags

  metric_query {
    id          = "calls"
    return_data = true

    metric {
      namespace   = var.alarm_namespace
      metric_name = aws_cloudwatch_log_metric_filter.kms_call_volume.metric_transformation[0].name
      period      = var.alarm_period_seconds
      stat        = "Sum"
    }
  }

  metric_query {
    id          = "band"
    expression  = "ANOMALY_DETECTION_BAND(calls, ${var.kms_call_volume_band_width})"
    label       = "KMS API calls (expected)"
    return_data = true
  }
}
