# Key policies.
#
# Every key policy is assembled from the same base (administration, break-glass
# and the explicit deny) plus the usage statements of its purpose:
#
#   administrators  manage the key but hold no cryptographic permission, and
#                   are explicitly denied the cryptographic operations;
#   users           may use the key only through its AWS service
#                   (kms:ViaService) or, for the app key, only with the
#                   tenant_id and data_class encryption context present;
#   break-glass     the only principal that can disable a key or schedule its
#                   deletion; everybody else is denied both.
#
# A key policy's "Resource" is always "*": inside a key policy it means "this
# key", so the IAM checks that flag "*" resources do not apply here.

locals {
  # Administrative actions only. No Encrypt, Decrypt, ReEncrypt or
  # GenerateDataKey*, and no wildcards that could expand to them.
  key_admin_actions = [
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:ReplicateKey",
    "kms:RevokeGrant",
    "kms:RotateKeyOnDemand",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
    "kms:UpdatePrimaryRegion",
  ]

  key_crypto_actions = [
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
  ]

  key_destructive_actions = [
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
  ]

  # The break-glass role can take a key out of service and bring it back.
  break_glass_actions = [
    "kms:CancelKeyDeletion",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:EnableKey",
    "kms:ScheduleKeyDeletion",
  ]

  # Operations an AWS service performs with a key on a principal's behalf.
  service_usage_actions = [
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
  ]

  # Operations greenlang-crypto performs with the app key. Each of them takes
  # an encryption context, so each is bound to tenant_id and data_class.
  app_context_actions = [
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
  ]

  key_policies = merge(
    { for purpose in keys(local.service_key_purposes) : purpose => data.aws_iam_policy_document.service_key[purpose].json },
    { app = data.aws_iam_policy_document.app_key.json },
  )
}

data "aws_iam_policy_document" "key_base" {
  #checkov:skip=CKV_AWS_109:Key policy statements apply only to the key they are attached to; Resource "*" means this key, and administrators need PutKeyPolicy.
  #checkov:skip=CKV_AWS_111:Key policy statements apply only to the key they are attached to; Resource "*" means this key.
  #checkov:skip=CKV_AWS_356:In a key policy Resource "*" is the key itself and cannot be narrowed further.
  statement {
    sid       = "KeyAdministration"
    effect    = "Allow"
    actions   = local.key_admin_actions
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = var.key_administrator_arns
    }
  }

  statement {
    sid       = "DenyCryptographicUseByAdministrators"
    effect    = "Deny"
    actions   = local.key_crypto_actions
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = var.key_administrator_arns
    }
  }

  statement {
    sid       = "BreakGlassDisableAndDelete"
    effect    = "Allow"
    actions   = local.break_glass_actions
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [var.break_glass_role_arn]
    }
  }

  statement {
    sid       = "DenyDisableAndDeleteExceptBreakGlass"
    effect    = "Deny"
    actions   = local.key_destructive_actions
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotEquals"
      variable = "aws:PrincipalArn"
      values   = [var.break_glass_role_arn]
    }
  }
}

# Keys used by one AWS service on behalf of the principals in key_user_arns.
data "aws_iam_policy_document" "service_key" {
  #checkov:skip=CKV_AWS_109:Key policy statements apply only to the key they are attached to; Resource "*" means this key.
  #checkov:skip=CKV_AWS_111:Key policy statements apply only to the key they are attached to; usage is restricted by kms:ViaService and kms:CallerAccount.
  #checkov:skip=CKV_AWS_356:In a key policy Resource "*" is the key itself and cannot be narrowed further.
  for_each = local.service_key_purposes

  source_policy_documents = [data.aws_iam_policy_document.key_base.json]

  statement {
    sid       = "UseThroughService"
    effect    = "Allow"
    actions   = local.service_usage_actions
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = local.key_users[each.key]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [for region in local.key_regions : "${each.value.service}.${region}.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:CallerAccount"
      values   = [local.account_id]
    }
  }

  # RDS, ElastiCache, EKS and Secrets Manager keep using a key through grants
  # attached to the resource they create; allow those grants and no others.
  statement {
    sid       = "GrantsForServiceResources"
    effect    = "Allow"
    actions   = ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = local.key_users[each.key]
    }

    condition {
      test     = "Bool"
      variable = "kms:GrantIsForAWSResource"
      values   = ["true"]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [for region in local.key_regions : "${each.value.service}.${region}.amazonaws.com"]
    }
  }

  # The master key encrypts the alarm topic: CloudWatch must be able to
  # publish to it.
  dynamic "statement" {
    for_each = each.key == "master" ? [1] : []

    content {
      sid       = "CloudWatchAlarmsPublishToEncryptedTopic"
      effect    = "Allow"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = ["*"]

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
}

# The application key: greenlang-crypto calls KMS directly, and every data key
# it generates or unwraps must be bound to a tenant and a data class.
data "aws_iam_policy_document" "app_key" {
  #checkov:skip=CKV_AWS_109:Key policy statements apply only to the key they are attached to; Resource "*" means this key.
  #checkov:skip=CKV_AWS_111:Key policy statements apply only to the key they are attached to; usage requires the tenant_id and data_class encryption context.
  #checkov:skip=CKV_AWS_356:In a key policy Resource "*" is the key itself and cannot be narrowed further.
  source_policy_documents = [data.aws_iam_policy_document.key_base.json]

  statement {
    sid       = "DescribeKey"
    effect    = "Allow"
    actions   = ["kms:DescribeKey"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = local.key_users["app"]
    }
  }

  statement {
    sid       = "UseWithTenantAndDataClassContext"
    effect    = "Allow"
    actions   = local.app_context_actions
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = local.key_users["app"]
    }

    condition {
      test     = "Null"
      variable = "kms:EncryptionContext:tenant_id"
      values   = ["false"]
    }

    condition {
      test     = "Null"
      variable = "kms:EncryptionContext:data_class"
      values   = ["false"]
    }

    # "?*" rejects an empty tenant id.
    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:tenant_id"
      values   = ["?*"]
    }

    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:data_class"
      values   = var.app_data_classes
    }
  }
}
