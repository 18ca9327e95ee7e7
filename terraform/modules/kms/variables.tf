variable "name_prefix" {
  description = "Prefix for every key alias, alarm and topic name. Aliases become alias/<name_prefix>-<purpose>."
  type        = string
  default     = "greenlang"

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9_-]{0,39}$", var.name_prefix))
    error_message = "name_prefix must be 1-40 characters of letters, digits, '-' or '_', starting with a letter or digit."
  }
}

variable "tags" {
  description = "Tags added to every resource the module creates."
  type        = map(string)
  default     = {}
}

variable "key_administrator_arns" {
  description = "IAM principal ARNs that administer the keys (policy, tags, rotation, aliases). They get no cryptographic permissions. Include the principal that runs Terraform, or KMS refuses the policy (lockout safety check)."
  type        = list(string)

  validation {
    condition     = length(var.key_administrator_arns) > 0
    error_message = "At least one key administrator ARN is required; a key without administrators cannot be managed."
  }

  validation {
    condition     = alltrue([for arn in var.key_administrator_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", arn))])
    error_message = "key_administrator_arns must contain IAM role or user ARNs."
  }
}

variable "key_user_arns" {
  description = "Map of key purpose (master, database, storage, cache, secrets, eks, app) to the IAM principal ARNs allowed to use that key. Service keys are usable only through their AWS service (kms:ViaService). A purpose that is absent or empty falls back to the account root, which delegates to IAM policies in the account while keeping every condition of the key policy."
  type        = map(list(string))
  default     = {}

  validation {
    condition = alltrue([
      for purpose in keys(var.key_user_arns) :
      contains(["master", "database", "storage", "cache", "secrets", "eks", "app"], purpose)
    ])
    error_message = "key_user_arns keys must be key purposes: master, database, storage, cache, secrets, eks, app."
  }

  validation {
    condition = alltrue(flatten([
      for arns in values(var.key_user_arns) : [
        for arn in arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(root|role/.+|user/.+)$", arn))
      ]
    ]))
    error_message = "key_user_arns must contain IAM role, user or account root ARNs."
  }
}

variable "break_glass_role_arn" {
  description = "The only IAM role allowed to call kms:DisableKey and kms:ScheduleKeyDeletion on the keys. Every other principal, administrators included, is explicitly denied."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$", var.break_glass_role_arn))
    error_message = "break_glass_role_arn must be an IAM role ARN."
  }
}

variable "rotation_period_in_days" {
  description = "Days between automatic rotations of each key's backing material (AWS KMS accepts 90-2560)."
  type        = number
  default     = 365

  validation {
    condition     = var.rotation_period_in_days >= 90 && var.rotation_period_in_days <= 2560 && floor(var.rotation_period_in_days) == var.rotation_period_in_days
    error_message = "rotation_period_in_days must be a whole number between 90 and 2560."
  }
}

variable "deletion_window_in_days" {
  description = "Waiting period in days before a key scheduled for deletion is destroyed (AWS KMS accepts 7-30)."
  type        = number
  default     = 30

  validation {
    condition     = var.deletion_window_in_days >= 7 && var.deletion_window_in_days <= 30 && floor(var.deletion_window_in_days) == var.deletion_window_in_days
    error_message = "deletion_window_in_days must be a whole number between 7 and 30."
  }
}

variable "enable_dr_replicas" {
  description = "Create a replica of every key (and its alias) in the region of the aws.dr provider. Keys are always multi-Region, so replicas can be added later without replacing them."
  type        = bool
  default     = true
}

variable "app_data_classes" {
  description = "StringLike patterns allowed for kms:EncryptionContext:data_class on the app key. The default accepts any non-empty value; list your classes (for example [\"pii\", \"secret\"]) to restrict it."
  type        = list(string)
  default     = ["?*"]

  validation {
    condition     = length(var.app_data_classes) > 0
    error_message = "app_data_classes must contain at least one pattern."
  }
}

variable "cloudtrail_log_group_name" {
  description = "Name of the existing CloudWatch Logs group that receives the account's CloudTrail management events (KMS events must not be excluded)."
  type        = string

  validation {
    condition     = length(var.cloudtrail_log_group_name) > 0
    error_message = "cloudtrail_log_group_name must not be empty."
  }
}

variable "alarm_namespace" {
  description = "CloudWatch metric namespace for the metrics extracted from CloudTrail."
  type        = string
  default     = "GreenLang/KMS"
}

variable "alarm_period_seconds" {
  description = "Evaluation period in seconds for the KMS alarms."
  type        = number
  default     = 300

  validation {
    condition     = contains([60, 300, 900, 3600], var.alarm_period_seconds)
    error_message = "alarm_period_seconds must be 60, 300, 900 or 3600."
  }
}

variable "decrypt_failure_threshold" {
  description = "Number of failed kms:Decrypt calls in one alarm period that raises the decrypt-failure alarm."
  type        = number
  default     = 5

  validation {
    condition     = var.decrypt_failure_threshold >= 1
    error_message = "decrypt_failure_threshold must be at least 1."
  }
}

variable "kms_call_volume_band_width" {
  description = "Width, in standard deviations, of the CloudWatch anomaly detection band for the KMS call volume alarm. Smaller is more sensitive."
  type        = number
  default     = 3

  validation {
    condition     = var.kms_call_volume_band_width > 0 && var.kms_call_volume_band_width <= 10
    error_message = "kms_call_volume_band_width must be greater than 0 and at most 10."
  }
}

variable "alarm_email_endpoints" {
  description = "E-mail addresses subscribed to the alarm topic (each must confirm its subscription)."
  type        = list(string)
  default     = []
}
