"""Fixtures for the admin API tests: a local-provider service with audit and metrics, an app,
TestClient, and token factories (HS256 dev tokens and RS256 tokens)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from greenlang_crypto.api import AuthSettings, JwtAuthorizer, build_stack, create_app
from greenlang_crypto.api.app import Stack
from greenlang_crypto.api.auth import DEV_AUDIENCE, DEV_ISSUER, PERMISSIONS, dev_secret
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider

ALL = list(PERMISSIONS)
TENANT = "tenant-a"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    LocalKeyProvider(d).create_master_key()
    return d


@pytest.fixture
def stack(data_dir: Path) -> Iterator[Stack]:
    s = build_stack(EncryptionServiceConfig(data_dir=data_dir), flush_interval=60.0)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def secret(data_dir: Path) -> str:
    return dev_secret(data_dir)


@pytest.fixture
def settings(secret: str) -> AuthSettings:
    return AuthSettings(
        algorithms=("HS256",), key=secret, issuer=DEV_ISSUER, audience=DEV_AUDIENCE, leeway=5
    )


@pytest.fixture
def app(stack: Stack, settings: AuthSettings) -> FastAPI:
    return create_app(
        stack.service, stack.audit, authorizer=JwtAuthorizer(settings), registry=stack.registry
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


TokenFactory = Callable[..., str]


@pytest.fixture
def make_token(secret: str) -> TokenFactory:
    def make(
        permissions: list[str] | None = None,
        *,
        tenant: str | None = TENANT,
        subject: str = "alice",
        **overrides: Any,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            "iss": DEV_ISSUER,
            "aud": DEV_AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "permissions": ALL if permissions is None else permissions,
        }
        if tenant is not None:
            claims["tenant_id"] = tenant
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, secret, algorithm="HS256")

    return make


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class RsaKeys:
    private_pem: bytes
    public_pem: bytes


@pytest.fixture(scope="session")
def rsa_keys() -> RsaKeys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return RsaKeys(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
