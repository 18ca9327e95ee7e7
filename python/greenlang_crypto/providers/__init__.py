"""Key providers: AWS KMS (``aws_kms``, needs boto3) and the embedded local default (``local``)."""

from greenlang_crypto.providers.base import (
    GeneratedDataKey,
    KeyLimits,
    KeyProvider,
    ProviderHealth,
)

__all__ = ["GeneratedDataKey", "KeyLimits", "KeyProvider", "ProviderHealth"]
