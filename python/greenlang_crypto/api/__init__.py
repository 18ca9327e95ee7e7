"""FastAPI admin router, authentication and the ``serve`` command (needs the ``api`` extra).

Mounting on a host app takes one call, plus a router each for metrics and health if wanted::

    from greenlang_crypto.api import (
        JwtAuthorizer, AuthSettings, build_stack, health_router, metrics_router,
        mount_encryption_api,
    )

    stack = build_stack(config)
    mount_encryption_api(app, stack.service, stack.audit,
                         authorizer=JwtAuthorizer(AuthSettings(algorithms=("RS256",), key=pem)))
    app.include_router(metrics_router(stack.registry))
    app.include_router(health_router(stack.service, stack.audit))

The host app's own routes keep its exception handlers and FastAPI's 422 details: the API's
routes answer their own errors. Names are resolved lazily, so the CLI can register
``serve``/``token``/``audit`` without importing FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenlang_crypto.api.app import (
        Stack,
        build_stack,
        create_app,
        health_router,
        metrics_router,
        mount_encryption_api,
    )
    from greenlang_crypto.api.auth import (
        FLEET_PERMISSION,
        KNOWN_PERMISSIONS,
        PERMISSIONS,
        AuthSettings,
        JwtAuthorizer,
        Principal,
        dev_secret,
        dev_settings,
        mint_token,
    )
    from greenlang_crypto.api.routes import API_PREFIX, PERMISSION_ATTR, build_router

_EXPORTS = {
    "Stack": "app",
    "build_stack": "app",
    "create_app": "app",
    "health_router": "app",
    "metrics_router": "app",
    "mount_encryption_api": "app",
    "FLEET_PERMISSION": "auth",
    "KNOWN_PERMISSIONS": "auth",
    "PERMISSIONS": "auth",
    "AuthSettings": "auth",
    "JwtAuthorizer": "auth",
    "Principal": "auth",
    "dev_secret": "auth",
    "dev_settings": "auth",
    "mint_token": "auth",
    "API_PREFIX": "routes",
    "PERMISSION_ATTR": "routes",
    "build_router": "routes",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "API_PREFIX",
    "FLEET_PERMISSION",
    "KNOWN_PERMISSIONS",
    "PERMISSIONS",
    "PERMISSION_ATTR",
    "AuthSettings",
    "JwtAuthorizer",
    "Principal",
    "Stack",
    "build_router",
    "build_stack",
    "create_app",
    "dev_secret",
    "dev_settings",
    "health_router",
    "metrics_router",
    "mint_token",
    "mount_encryption_api",
]
