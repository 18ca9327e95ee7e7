output "key_arns" {
  description = "Map of key purpose to the ARN of its primary key."
  value       = { for purpose, key in aws_kms_key.this : purpose => key.arn }
}

output "key_ids" {
  description = "Map of key purpose to the key id of its primary key."
  value       = { for purpose, key in aws_kms_key.this : purpose => key.key_id }
}

output "alias_names" {
  description = "Map of key purpose to its alias name (alias/<name_prefix>-<purpose>), identical in the primary and DR regions."
  value       = { for purpose, alias in aws_kms_alias.this : purpose => alias.name }
}

output "alias_arns" {
  description = "Map of key purpose to the ARN of its alias in the primary region."
  value       = { for purpose, alias in aws_kms_alias.this : purpose => alias.arn }
}

output "replica_key_arns" {
  description = "Map of key purpose to the ARN of its replica in the DR region; empty when enable_dr_replicas is false."
  value       = { for purpose, key in aws_kms_replica_key.dr : purpose => key.arn }
}

output "replica_key_ids" {
  description = "Map of key purpose to the key id of its replica in the DR region; empty when enable_dr_replicas is false."
  value       = { for purpose, key in aws_kms_replica_key.dr : purpose => key.key_id }
}

output "app_key_arn" {
  description = "ARN of the application key that wraps greenlang-crypto data encryption keys."
  value       = aws_kms_key.this["app"].arn
}

output "primary_region" {
  description = "Region of the primary keys."
  value       = local.region
}

output "dr_region" {
  description = "Region of the replica keys (the aws.dr provider's region), or null when enable_dr_replicas is false."
  value       = var.enable_dr_replicas ? local.dr_region : null
}

output "sns_topic_arn" {
  description = "ARN of the encrypted SNS topic that receives the KMS alarms."
  value       = aws_sns_topic.kms_alarms.arn
}

output "alarm_arns" {
  description = "Map of anomaly name to the ARN of its CloudWatch alarm."
  value = {
    decrypt_failures        = aws_cloudwatch_metric_alarm.kms_decrypt_failures.arn
    key_disabled            = aws_cloudwatch_metric_alarm.kms_key_disabled.arn
    key_deletion_scheduled  = aws_cloudwatch_metric_alarm.kms_key_deletion_scheduled.arn
    kms_call_volume_anomaly = aws_cloudwatch_metric_alarm.kms_call_volume_anomaly.arn
  }
}

output "greenlang_crypto_config" {
  description = "Settings for the greenlang-crypto AWS KMS provider, ready to serialise to its configuration: kms_key_id (app key ARN), kms_replica_key_ids (app key replica ARNs, failover order), region, replica_regions, key_alias and the encryption context keys the key policy requires."
  value = {
    kms_key_id              = aws_kms_key.this["app"].arn
    kms_replica_key_ids     = [for purpose, key in aws_kms_replica_key.dr : key.arn if purpose == "app"]
    region                  = local.region
    replica_regions         = var.enable_dr_replicas ? [local.dr_region] : []
    key_alias               = aws_kms_alias.this["app"].name
    encryption_context_keys = ["tenant_id", "data_class"]
  }
}
