"""Bearer-token authentication (malformed, forged, expired tokens) and permissions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from greenlang_crypto.api import AuthSettings, JwtAuthorizer, create_app
from greenlang_crypto.api.app import Stack
from greenlang_crypto.api.auth import DEV_AUDIENCE, DEV_ISSUER
from greenlang_crypto.audit import AuditQuery

from .conftest import RsaKeys, TokenFactory, bearer

STATUS = "/api/v1/encryption/status"
UNAUTHORIZED = {"detail": "unauthorized"}
# /status is fleet-wide: a token reading it holds the fleet grant and names no tenant.
FLEET = "encryption:fleet"
READER = ["encryption:read", FLEET]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    sig = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{_b64url(sig)}"


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "mallory",
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "permissions": READER,
    }
    claims.update(extra)
    return claims


def test_valid_token_is_accepted(client: TestClient, make_token: TokenFactory) -> None:
    r = client.get(STATUS, headers=bearer(make_token(READER, tenant=None)))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer a.b",
        "Bearer a.b.c.d",
        "Bearer !!!.e30.c2ln",
        "Bearer " + _b64url(b"not json") + ".e30.c2ln",
        "Bearer " + _b64url(b'{"alg":"HS256"}') + ".!!!.c2ln",
        "Bearer \u00e9\u00e9.e30.c2ln",
    ],
    ids=[
        "missing",
        "empty",
        "bearer-only",
        "bearer-space",
        "basic",
        "two-segments",
        "four-segments",
        "bad-base64-header",
        "non-json-header",
        "bad-base64-payload",
        "non-ascii",
    ],
)
def test_malformed_tokens_get_uniform_401(client: TestClient, header: str | None) -> None:
    # Header values travel as latin-1 bytes, so the non-ASCII case is sent as such.
    headers: dict[str, Any] = {} if header is None else {"Authorization": header.encode("latin-1")}
    r = client.get(STATUS, headers=headers)
    assert r.status_code == 401
    assert r.json() == UNAUTHORIZED


def test_token_over_8kb_is_refused(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token(["encryption:read"], padding="x" * 9000)
    assert len(token) > 8192
    r = client.get(STATUS, headers=bearer(token))
    assert r.status_code == 401
    assert r.json() == UNAUTHORIZED


def test_alg_none_and_unlisted_alg(client: TestClient, secret: str) -> None:
    none_token = _raw_token({"alg": "none", "typ": "JWT"}, _claims())
    r = client.get(STATUS, headers=bearer(none_token))
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)
    hs512 = jwt.encode(_claims(), secret, algorithm="HS512")
    r = client.get(STATUS, headers=bearer(hs512))
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)


@pytest.fixture
def rs_client(stack: Stack, rsa_keys: RsaKeys) -> Any:
    settings = AuthSettings(
        algorithms=("RS256",),
        keys_by_kid={"k1": rsa_keys.public_pem},
        issuer=DEV_ISSUER,
        audience=DEV_AUDIENCE,
        leeway=5,
    )
    app = create_app(stack.service, stack.audit, authorizer=JwtAuthorizer(settings))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_rs256_with_pinned_kid(rs_client: TestClient, rsa_keys: RsaKeys) -> None:
    good = jwt.encode(_claims(), rsa_keys.private_pem, algorithm="RS256", headers={"kid": "k1"})
    assert rs_client.get(STATUS, headers=bearer(good)).status_code == 200
    unknown = jwt.encode(_claims(), rsa_keys.private_pem, algorithm="RS256", headers={"kid": "k2"})
    r = rs_client.get(STATUS, headers=bearer(unknown))
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)
    no_kid = jwt.encode(_claims(), rsa_keys.private_pem, algorithm="RS256")
    assert rs_client.get(STATUS, headers=bearer(no_kid)).status_code == 401


def test_hs256_signed_with_the_rsa_public_key(rs_client: TestClient, rsa_keys: RsaKeys) -> None:
    # The classic key-confusion forgery: HMAC keyed with the server's public key bytes.
    def sign(data: bytes) -> bytes:
        return hmac.new(rsa_keys.public_pem, data, hashlib.sha256).digest()

    forged = _raw_token({"alg": "HS256", "typ": "JWT", "kid": "k1"}, _claims(), sign)
    r = rs_client.get(STATUS, headers=bearer(forged))
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)


def test_settings_refuse_none_and_mixed_algorithms(rsa_keys: RsaKeys) -> None:
    with pytest.raises(ValueError):
        AuthSettings(algorithms=("none",), key="k" * 32)
    with pytest.raises(ValueError):
        AuthSettings(algorithms=("HS256", "RS256"), key=rsa_keys.public_pem)
    with pytest.raises(ValueError):
        AuthSettings(algorithms=("HS256",))


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 60},
        {"nbf": int(time.time()) + 120},
        {"aud": "someone-else"},
        {"iss": "https://evil.example"},
        {"exp": None},
        {"sub": None},
        {"iss": None},
    ],
    ids=["expired", "nbf-future", "wrong-aud", "wrong-iss", "no-exp", "no-sub", "no-iss"],
)
def test_bad_or_missing_claims_get_401(
    client: TestClient, make_token: TokenFactory, overrides: dict[str, Any]
) -> None:
    token = make_token(["encryption:read"], **overrides)
    r = client.get(STATUS, headers=bearer(token))
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)


def test_small_skew_within_leeway_is_accepted(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token(READER, tenant=None, nbf=int(time.time()) + 2)
    assert client.get(STATUS, headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("post", "/api/v1/encryption/keys/rotate", "encryption:admin"),
        ("get", "/api/v1/encryption/keys", "encryption:admin"),
        ("get", "/api/v1/encryption/audit", "encryption:audit"),
        ("get", "/api/v1/encryption/status", "encryption:read"),
    ],
)
def test_missing_permission_is_403_and_audited(
    client: TestClient,
    stack: Stack,
    make_token: TokenFactory,
    method: str,
    path: str,
    needed: str,
) -> None:
    others = [p for p in ["encryption:encrypt", "encryption:decrypt", "encryption:read"]]
    others = [p for p in others if p != needed] + [FLEET]
    before = stack.service.primary_version
    token = make_token(others, subject="bob", tenant=None)
    r = client.request(method, path, headers=bearer(token))
    assert r.status_code == 403
    assert r.json() == {"detail": "forbidden"}
    assert stack.service.primary_version == before
    # Refusals are counted per source and written per interval (here: now), not one by one.
    client.app.state.glc_refusals.flush()  # type: ignore[attr-defined]
    stack.audit.flush()
    denied = stack.audit.query(AuditQuery(action="access_refused"))
    assert len(denied) == 1
    rec = denied[0].entry
    assert rec.outcome == "denied"
    assert rec.details["reason:permission"] == 1 and rec.details["count"] == 1
    assert rec.details["subjects"] == '["bob"]'
    assert rec.details[f"route:{method.upper()} {path}"] == 1
