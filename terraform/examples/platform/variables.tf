variable "region" {
  description = "Primary AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "dr_region" {
  description = "Disaster recovery region for the KMS replica keys."
  type        = string
  default     = "eu-central-1"
}

variable "name_prefix" {
  description = "Prefix for resource names and key aliases."
  type        = string
  default     = "greenlang"
}

variable "vpc_id" {
  description = "VPC that hosts the database, cache and EKS cluster."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two availability zones) for the database, cache and EKS cluster."
  type        = list(string)
}

variable "app_cidr_blocks" {
  description = "CIDR blocks of the application tier allowed to reach PostgreSQL and Redis."
  type        = list(string)
}

variable "cloudtrail_log_group_name" {
  description = "CloudWatch Logs group that receives the account's CloudTrail events."
  type        = string
}

variable "key_administrator_arns" {
  description = "IAM principals that administer the KMS keys (include the role that runs Terraform)."
  type        = list(string)
}

variable "break_glass_role_arn" {
  description = "IAM role allowed to disable keys or schedule their deletion."
  type        = string
}

variable "app_role_arns" {
  description = "IAM roles of the services that run greenlang-crypto (users of the app key)."
  type        = list(string)
}

variable "alarm_email_endpoints" {
  description = "E-mail addresses that receive the KMS alarms."
  type        = list(string)
  default     = []
}

variable "eks_version" {
  description = "Kubernetes version of the EKS cluster."
  type        = string
  default     = "1.32"
}
