"""Bearer-token authentication (JWT via PyJWT) and permission checks for the admin API.

Algorithms come from :class:`AuthSettings`, never from the token (RFC 8725, 3.1): a token whose
``alg`` is ``none``, outside the allow-list, or HS256 signed with an RSA public key as the HMAC
secret is refused. ``iss``, ``aud``, ``exp`` and ``nbf`` are checked with a small leeway. Every
authentication failure answers 401 with one uniform body, so a caller learns nothing about
which check failed.

Scopes: a token that names a tenant (``tenant_id``) acts on that tenant's data only; the
fleet-wide routes (the shared keyring, audit reads, status) need :data:`FLEET_PERMISSION` on a
token that names no tenant. A token carrying both a tenant and that grant is refused, and
:func:`mint_token` will not make one.

Host applications can replace :class:`JwtAuthorizer` with their own FastAPI dependency that
returns a :class:`Principal`.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request, status

from greenlang_crypto._files import create_once

__all__ = [
    "FLEET_PERMISSION",
    "KNOWN_PERMISSIONS",
    "PERMISSIONS",
    "AuthSettings",
    "JwtAuthorizer",
    "Principal",
    "dev_secret",
    "dev_settings",
    "mint_token",
    "unauthorized",
]

_log = logging.getLogger("greenlang_crypto.api.auth")

#: Permissions the routes require.
PERMISSIONS = (
    "encryption:encrypt",
    "encryption:decrypt",
    "encryption:admin",
    "encryption:audit",
    "encryption:read",
    "encryption:erase",
)
#: The grant that lets a token act on the whole fleet (the shared keyring, every tenant's
#: audit records, the service status). It widens where the other permissions apply rather
#: than naming an operation, so a monitoring token can hold it with ``encryption:read`` alone
#: and still not rotate keys. A token carrying it must not name a tenant.
FLEET_PERMISSION = "encryption:fleet"
#: Everything a token may be granted.
KNOWN_PERMISSIONS = (*PERMISSIONS, FLEET_PERMISSION)
_ASYMMETRIC_PREFIXES = ("RS", "PS", "ES", "Ed")
_UNAUTHORIZED_BODY = "unauthorized"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller.

    Attributes:
        subject: The actor recorded in the audit log (the token's ``sub``).
        tenant: The caller's tenant, if the token names one.
        permissions: Granted permissions.
    """

    subject: str
    tenant: str | None
    permissions: frozenset[str] = field(default_factory=frozenset)

    @property
    def fleet(self) -> bool:
        """Whether the caller may act fleet-wide: the fleet grant and no tenant.

        Host authorizers build principals themselves, so a principal that names a tenant is
        never fleet-wide here, whatever it was granted.
        """
        return self.tenant is None and FLEET_PERMISSION in self.permissions


@dataclass(frozen=True)
class AuthSettings:
    """How tokens are checked.

    Attributes:
        algorithms: Accepted ``alg`` values (pinned; for example ``("RS256",)``).
        key: The verification key (HMAC secret, or PEM public key) when tokens carry no ``kid``.
        keys_by_kid: Verification keys by ``kid``; a token with an unknown ``kid`` is refused.
        issuer: Required ``iss``.
        audience: Required ``aud``.
        leeway: Clock skew tolerated on ``exp``/``nbf``/``iat``, in seconds.
        permissions_claim: Claim holding the permissions (a list, or a space-separated string).
        tenant_claim: Claim holding the tenant id.
        max_token_bytes: Longer tokens are refused before parsing.
    """

    algorithms: tuple[str, ...]
    key: Any = field(default=None, repr=False)
    keys_by_kid: Mapping[str, Any] = field(default_factory=dict, repr=False)
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    permissions_claim: str = "permissions"
    tenant_claim: str = "tenant_id"
    max_token_bytes: int = 8192

    def __post_init__(self) -> None:
        if not self.algorithms or any(a.lower() == "none" for a in self.algorithms):
            raise ValueError("algorithms must be a non-empty allow-list without 'none'")
        symmetric = [a for a in self.algorithms if a.startswith("HS")]
        if symmetric and len(symmetric) != len(self.algorithms):
            # Mixing HMAC and public-key algorithms is how key-confusion attacks start.
            raise ValueError("do not mix HMAC and public-key algorithms in one allow-list")
        if self.key is None and not self.keys_by_kid:
            raise ValueError("a verification key (key or keys_by_kid) is required")


def unauthorized() -> HTTPException:
    """The one 401 every authentication failure raises."""
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=_UNAUTHORIZED_BODY,
        headers={"WWW-Authenticate": "Bearer"},
    )


class JwtAuthorizer:
    """FastAPI dependency: ``Authorization: Bearer <JWT>`` -> :class:`Principal`.

    Args:
        settings: Algorithms, keys and claims to check.
    """

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings

    def __call__(self, request: Request) -> Principal:
        """Authenticates the request or raises the uniform 401."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized()
        try:
            return self.authenticate(token)
        except HTTPException:
            raise
        except Exception as exc:
            # Any parsing or verification failure, whatever PyJWT raised: 401, never 500.
            _log.info("token rejected: %s", type(exc).__name__)
            raise unauthorized() from None

    def authenticate(self, token: str) -> Principal:
        """Verifies ``token`` and builds the principal.

        Raises:
            HTTPException: 401 on any failure.
        """
        import jwt

        s = self.settings
        if len(token) > s.max_token_bytes or not token.isascii() or token.count(".") != 2:
            raise unauthorized()
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in s.algorithms:
            raise unauthorized()
        kid = header.get("kid")
        if s.keys_by_kid:
            if not isinstance(kid, str) or kid not in s.keys_by_kid:
                raise unauthorized()
            key = s.keys_by_kid[kid]
        else:
            if kid is not None and s.key is None:
                raise unauthorized()
            key = s.key
        if alg.startswith("HS") and _looks_like_public_key(key):
            raise unauthorized()
        required = ["exp", "sub"]
        if s.issuer is not None:
            required.append("iss")
        if s.audience is not None:
            required.append("aud")
        claims = jwt.decode(
            token,
            key,
            algorithms=list(s.algorithms),
            audience=s.audience,
            issuer=s.issuer,
            leeway=s.leeway,
            options={"require": required, "verify_aud": s.audience is not None},
        )
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise unauthorized()
        tenant = claims.get(s.tenant_claim)
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            raise unauthorized()
        permissions = _permissions(claims.get(s.permissions_claim))
        if tenant is not None and FLEET_PERMISSION in permissions:
            # An issuer that put both in one token made a mistake; acting on either half
            # would guess which one it meant.
            _log.info("token rejected: fleet grant on a tenant-scoped token")
            raise unauthorized()
        return Principal(subject, tenant, permissions)


def _looks_like_public_key(key: Any) -> bool:
    data = key.encode() if isinstance(key, str) else key
    return isinstance(data, bytes) and (b"-----BEGIN" in data or data.startswith(b"ssh-"))


def _permissions(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(p for p in value if isinstance(p, str))
    return frozenset()


# -- development tokens ----------------------------------------------------------------------

DEV_ISSUER = "greenlang-crypto-dev"
DEV_AUDIENCE = "greenlang-crypto"
_SECRET_FILE = "api-token.secret"  # noqa: S105 - a file name, not a secret


def dev_secret(data_dir: str | os.PathLike[str], *, create: bool = True) -> str:
    """The local HS256 secret in ``<data_dir>/api-token.secret`` (created 0600, 64 hex chars).

    Raises:
        FileNotFoundError: It does not exist and ``create`` is false.
    """
    path = Path(data_dir) / _SECRET_FILE
    if not path.exists():
        if not create:
            raise FileNotFoundError(str(path))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Whole or absent, and never overwritten: a process that loses the race uses the
        # winner's secret, and no process reads a file still being written.
        create_once(path, secrets.token_hex(32).encode())
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} must not be readable by group or others")
    return path.read_text().strip()


def dev_settings(data_dir: str | os.PathLike[str]) -> AuthSettings:
    """Settings that accept tokens from :func:`mint_token` for ``data_dir``."""
    return AuthSettings(
        algorithms=("HS256",),
        key=dev_secret(data_dir),
        issuer=DEV_ISSUER,
        audience=DEV_AUDIENCE,
    )


def mint_token(
    secret: str,
    *,
    subject: str,
    permissions: Sequence[str],
    tenant: str | None = None,
    ttl: float = 3600.0,
    issuer: str = DEV_ISSUER,
    audience: str = DEV_AUDIENCE,
) -> str:
    """A development HS256 token (for ``greenlang-crypto token`` and tests).

    Raises:
        ValueError: ``permissions`` holds the fleet grant and ``tenant`` is set (such a
            token would be refused).
    """
    import jwt

    if tenant is not None and FLEET_PERMISSION in permissions:
        raise ValueError(f"{FLEET_PERMISSION} cannot be granted to a tenant-scoped token")

    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl),
        "permissions": list(permissions),
    }
    if tenant is not None:
        claims["tenant_id"] = tenant
    return jwt.encode(claims, secret, algorithm="HS256")
