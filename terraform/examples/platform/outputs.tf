output "greenlang_crypto_config" {
  description = "Settings for the greenlang-crypto AWS KMS provider."
  value       = module.kms.greenlang_crypto_config
}

output "kms_alias_names" {
  description = "Alias of every key in the hierarchy."
  value       = module.kms.alias_names
}

output "kms_alarm_topic_arn" {
  description = "SNS topic that receives the KMS alarms."
  value       = module.kms.sns_topic_arn
}

output "aurora_endpoint" {
  description = "Writer endpoint of the Aurora PostgreSQL cluster."
  value       = aws_rds_cluster.aurora.endpoint
}

output "redis_primary_endpoint" {
  description = "Primary endpoint of the Redis replication group."
  value       = aws_elasticache_replication_group.redis.primary_endpoint_address
}

output "data_bucket" {
  description = "Name of the SSE-KMS data bucket."
  value       = aws_s3_bucket.data.bucket
}

output "eks_cluster_name" {
  description = "Name of the EKS cluster."
  value       = aws_eks_cluster.main.name
}
