"""The composition root: the one place that builds providers, key stores and shared caches.

Front doors (the CLI, the API, the compliance and SQLAlchemy commands) and the service itself
ask this module for what a configuration describes, so a provider is built, and its optional
dependency reported, in exactly one way. Each builder imports its dependency only when called:
a command that needs no KMS never pays for importing boto3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from greenlang_crypto.exceptions import ConfigurationError

if TYPE_CHECKING:
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.keys.store import KeyStore
    from greenlang_crypto.providers.base import KeyProvider
    from greenlang_crypto.redis_cache import RedisKeyCache

__all__ = ["build_key_cache", "build_key_store", "build_provider"]


def build_provider(config: EncryptionServiceConfig) -> KeyProvider:
    """The key provider ``config`` names (the local one, or AWS KMS).

    Raises:
        ConfigurationError: The provider needs an extra that is not installed.
    """
    if config.provider == "local":
        from greenlang_crypto.providers.local import LocalKeyProvider

        return LocalKeyProvider(config.data_dir)
    try:
        from greenlang_crypto.providers.aws_kms import AwsKmsKeyProvider
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the aws-kms provider needs the aws extra (missing {exc.name}): "
            'pip install "greenlang-crypto[aws]"'
        ) from None
    return AwsKmsKeyProvider(
        keys=config.kms_key_ids,
        region=config.kms_region,
        endpoint_url=config.kms_endpoint_url,
    )


def build_key_store(config: EncryptionServiceConfig) -> KeyStore:
    """The key store at ``config``'s URL, with its pool settings."""
    from greenlang_crypto.keys.store import open_key_store

    return open_key_store(
        config.resolved_key_store_url,
        pool_size=config.key_store_pool_size,
        transaction_pooler=config.key_store_transaction_pooler,
    )


def build_key_cache(config: EncryptionServiceConfig) -> RedisKeyCache | None:
    """The shared Redis key cache ``config.key_cache_url`` names, or None when unset."""
    if not config.key_cache_url:
        return None
    from greenlang_crypto.redis_cache import RedisKeyCache

    return RedisKeyCache.from_url(config.key_cache_url, ttl_seconds=config.cache_ttl_seconds)
