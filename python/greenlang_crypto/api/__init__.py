"""FastAPI admin router, authentication and the ``serve`` command (needs the ``api`` extra).

Mounting on a host app takes one call::

    from greenlang_crypto.api import JwtAuthorizer, AuthSettings, build_stack, mount_encryption_api

    stack = build_stack(config)
    mount_encryption_api(app, stack.service, stack.audit,
                         authorizer=JwtAuthorizer(AuthSettings(algorithms=("RS256",), key=pem)))

Names are resolved lazily, so the CLI can register ``serve``/``token``/``audit`` without
importing FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenlang_crypto.api.app import Stack, build_stack, create_app, mount_encryption_api
    from greenlang_crypto.api.auth import (
        FLEET_PERMISSION,
        AuthSettings,
        JwtAuthorizer,
        Principal,
        mint_token,
    )
    from greenlang_crypto.api.routes import API_PREFIX, PERMISSION_ATTR, build_router

_EXPORTS = {
    "Stack": "app",
    "build_stack": "app",
    "create_app": "app",
    "mount_encryption_api": "app",
    "FLEET_PERMISSION": "auth",
    "AuthSettings": "auth",
    "JwtAuthorizer": "auth",
    "Principal": "auth",
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


__all__ = [
    "API_PREFIX",
    "FLEET_PERMISSION",
    "PERMISSION_ATTR",
    "AuthSettings",
    "JwtAuthorizer",
    "Principal",
    "Stack",
    "build_router",
    "build_stack",
    "create_app",
    "mint_token",
    "mount_encryption_api",
]
