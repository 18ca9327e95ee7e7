"""The application's encryption stack: one per process, configured from the environment.

``GLC_DATA_DIR`` names the embedded default's data directory (the master key, the key store
and the audit log live there; it is created on first use). Any other ``GLC_*`` setting of
:class:`~greenlang_crypto.config.EncryptionServiceConfig` applies too, for example
``GLC_PROVIDER=aws-kms`` with ``GLC_KMS_KEY_IDS``.

The web app and the Alembic migrations both get their service from here, so a migration
encrypts with exactly the keys the app decrypts with.
"""

from __future__ import annotations

import functools

from fastapi import FastAPI
from greenlang_crypto.api import (
    JwtAuthorizer,
    Stack,
    build_stack,
    dev_settings,
    health_router,
    metrics_router,
    mount_encryption_api,
)
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.service import EncryptionService


@functools.cache
def stack() -> Stack:
    """The service with its audit log and metrics, built on first use."""
    # initialize_if_missing: a new, empty data directory gets a master key, as
    # `greenlang-crypto init` would create; a non-empty one without a key is refused.
    return build_stack(EncryptionServiceConfig.from_env(), initialize_if_missing=True)


def service() -> EncryptionService:
    """The EncryptionService the column types and the migrations use."""
    return stack().service


def close() -> None:
    """Flushes the audit log and closes the service, if this process built them."""
    if stack.cache_info().currsize:
        stack().close()
        stack.cache_clear()


def mount_library_routes(app: FastAPI) -> None:
    """Adds the library's admin API, ``/metrics`` and ``/healthz`` to ``app``.

    The admin API (``/api/v1/encryption/...``: key listing, rotation, tenant erasure, audit)
    accepts the development tokens of the data directory (``greenlang-crypto token``); a
    deployment passes ``AuthSettings`` with its identity provider's key instead.
    """
    built = stack()
    authorizer = JwtAuthorizer(dev_settings(built.service.config.data_dir))
    mount_encryption_api(app, built.service, built.audit, authorizer=authorizer)
    app.include_router(metrics_router(built.registry))
    app.include_router(health_router(built.service, built.audit))
