terraform {
  # Validation blocks that check several conditions and `precondition`
  # lifecycle blocks need Terraform 1.3 or later; 1.5 is the oldest release we
  # test the module against.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # rotation_period_in_days on aws_kms_key arrived in the 5.x series.
      version = ">= 5.50.0, < 7.0.0"
      # The caller passes a second AWS provider configured for the disaster
      # recovery region; replica keys and their aliases are created there.
      configuration_aliases = [aws.dr]
    }
  }
}
