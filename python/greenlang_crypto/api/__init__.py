"""FastAPI admin router, authentication and the ``serve`` command (needs the ``api`` extra).

Mounting on a host app takes one call::

    from greenlang_crypto.api import JwtAuthorizer, AuthSettings, build_stack, mount_encryption_api

    stack = build_stack(config)
    mount_encryption_api(app, stack.service, stack.audit,
                         authorizer=JwtAuthorizer(AuthSettings(algorithms=("RS256",), key=pem)))
"""

from __future__ import annotations

from greenlang_crypto.api.app import Stack, build_stack, create_app, mount_encryption_api
from greenlang_crypto.api.auth import AuthSettings, JwtAuthorizer, Principal, mint_token
from greenlang_crypto.api.routes import API_PREFIX, PERMISSION_ATTR, build_router

__all__ = [
    "API_PREFIX",
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
