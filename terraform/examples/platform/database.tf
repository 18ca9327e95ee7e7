# Aurora PostgreSQL encrypted with the database key. The master password is
# generated and stored by RDS in Secrets Manager under the secrets key.

resource "aws_db_subnet_group" "aurora" {
  name       = "${var.name_prefix}-aurora"
  subnet_ids = var.private_subnet_ids
  tags       = local.tags
}

resource "aws_security_group" "aurora" {
  name        = "${var.name_prefix}-aurora"
  description = "PostgreSQL access from the application tier only"
  vpc_id      = var.vpc_id
  tags        = local.tags

  ingress {
    description = "PostgreSQL from the application tier"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    cidr_blocks = var.app_cidr_blocks
  }
}

resource "aws_rds_cluster_parameter_group" "aurora" {
  name        = "${var.name_prefix}-aurora-pg16"
  family      = "aurora-postgresql16"
  description = "GreenLang Aurora PostgreSQL: TLS only, statement logging"
  tags        = local.tags

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name = "${var.name_prefix}-rds-enhanced-monitoring"
  tags = local.tags

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
    }]
  })
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_rds_cluster" "aurora" {
  #checkov:skip=CKV2_AWS_8:Backups are kept by Aurora's continuous backup (35 days); an AWS Backup plan is organisation-wide and lives outside this example.
  cluster_identifier              = "${var.name_prefix}-aurora"
  engine                          = "aurora-postgresql"
  engine_version                  = "16.4"
  database_name                   = "greenlang"
  master_username                 = "greenlang_admin"
  manage_master_user_password     = true
  master_user_secret_kms_key_id   = module.kms.key_arns["secrets"]
  db_subnet_group_name            = aws_db_subnet_group.aurora.name
  vpc_security_group_ids          = [aws_security_group.aurora.id]
  db_cluster_parameter_group_name = aws_rds_cluster_parameter_group.aurora.name

  storage_encrypted = true
  kms_key_id        = module.kms.key_arns["database"]

  iam_database_authentication_enabled = true
  deletion_protection                 = true
  backup_retention_period             = 35
  copy_tags_to_snapshot               = true
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "${var.name_prefix}-aurora-final"
  enabled_cloudwatch_logs_exports     = ["postgresql"]

  tags = local.tags
}

resource "aws_rds_cluster_instance" "aurora" {
  count = 2

  identifier                 = "${var.name_prefix}-aurora-${count.index}"
  cluster_identifier         = aws_rds_cluster.aurora.id
  instance_class             = "db.r6g.large"
  engine                     = aws_rds_cluster.aurora.engine
  engine_version             = aws_rds_cluster.aurora.engine_version
  db_subnet_group_name       = aws_db_subnet_group.aurora.name
  auto_minor_version_upgrade = true
  publicly_accessible        = false

  monitoring_interval = 30
  monitoring_role_arn = aws_iam_role.rds_monitoring.arn

  performance_insights_enabled    = true
  performance_insights_kms_key_id = module.kms.key_arns["database"]

  tags = local.tags
}
