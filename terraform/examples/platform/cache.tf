# ElastiCache for Redis (OSS) encrypted at rest with the cache key. Clients
# authenticate as ElastiCache RBAC users with IAM authentication.

resource "aws_elasticache_subnet_group" "redis" {
  name       = "${var.name_prefix}-redis"
  subnet_ids = var.private_subnet_ids
  tags       = local.tags
}

resource "aws_security_group" "redis" {
  name        = "${var.name_prefix}-redis"
  description = "Redis access from the application tier only"
  vpc_id      = var.vpc_id
  tags        = local.tags

  ingress {
    description = "Redis TLS from the application tier"
    from_port   = 6379
    to_port     = 6379
    protocol    = "tcp"
    cidr_blocks = var.app_cidr_blocks
  }
}

# The mandatory "default" user, switched off so that only IAM users can log in.
resource "aws_elasticache_user" "default" {
  user_id       = "${var.name_prefix}-default-disabled"
  user_name     = "default"
  engine        = "redis"
  access_string = "off -@all"

  authentication_mode {
    type = "no-password-required"
  }

  tags = local.tags
}

resource "aws_elasticache_user" "app" {
  user_id       = "${var.name_prefix}-app"
  user_name     = "${var.name_prefix}-app"
  engine        = "redis"
  access_string = "on ~* +@all -@dangerous"

  authentication_mode {
    type = "iam"
  }

  tags = local.tags
}

resource "aws_elasticache_user_group" "app" {
  user_group_id = "${var.name_prefix}-app"
  engine        = "redis"
  user_ids      = [aws_elasticache_user.default.user_id, aws_elasticache_user.app.user_id]
  tags          = local.tags
}

resource "aws_elasticache_replication_group" "redis" {
  replication_group_id = "${var.name_prefix}-redis"
  description          = "GreenLang cache, encrypted with the cache CMK"
  engine               = "redis"
  engine_version       = "7.1"
  node_type            = "cache.r6g.large"
  num_cache_clusters   = 2
  port                 = 6379

  subnet_group_name  = aws_elasticache_subnet_group.redis.name
  security_group_ids = [aws_security_group.redis.id]
  user_group_ids     = [aws_elasticache_user_group.app.user_group_id]

  automatic_failover_enabled = true
  multi_az_enabled           = true
  snapshot_retention_limit   = 7
  auto_minor_version_upgrade = true

  at_rest_encryption_enabled = true
  kms_key_id                 = module.kms.key_arns["cache"]
  transit_encryption_enabled = true

  tags = local.tags
}
