"""Token checks of the admin API, called directly: settings, claims, scopes, dev tokens.

The same authorizer behind a running app (HTTP status codes, audit records) is covered in
``tests/api/test_auth.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import HTTPException
from starlette.requests import Request

from greenlang_crypto.api.auth import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    FLEET_PERMISSION,
    KNOWN_PERMISSIONS,
    PERMISSIONS,
    AuthSettings,
    JwtAuthorizer,
    Principal,
    dev_secret,
    dev_settings,
    mint_token,
    unauthorized,
)

SECRET = "s" * 64


def settings(**overrides: Any) -> AuthSettings:
    options: dict[str, Any] = {
        "algorithms": ("HS256",),
        "key": SECRET,
        "issuer": DEV_ISSUER,
        "audience": DEV_AUDIENCE,
        "leeway": 5,
    }
    options.update(overrides)
    return AuthSettings(**options)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {
        "sub": "alice",
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "permissions": ["encryption:encrypt"],
        "tenant_id": "acme",
    }
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def token(key: Any = SECRET, algorithm: str = "HS256", headers: Any = None, **kw: Any) -> str:
    return jwt.encode(claims(**kw), key, algorithm=algorithm, headers=headers)


def refused(authorizer: JwtAuthorizer, raw: str) -> HTTPException:
    """The error the dependency raises for ``Authorization: Bearer <raw>``."""
    with pytest.raises(HTTPException) as info:
        authorizer(_request("Bearer " + raw))
    return info.value


def test_the_permission_names() -> None:
    assert PERMISSIONS == (
        "encryption:encrypt",
        "encryption:decrypt",
        "encryption:admin",
        "encryption:audit",
        "encryption:read",
        "encryption:erase",
    )
    assert FLEET_PERMISSION == "encryption:fleet"
    assert (*PERMISSIONS, FLEET_PERMISSION) == KNOWN_PERMISSIONS


def test_a_principal_is_fleet_wide_only_with_the_grant_and_no_tenant() -> None:
    grant = frozenset({FLEET_PERMISSION})
    assert Principal("ops", None, grant).fleet is True
    assert Principal("ops", "acme", grant).fleet is False
    assert Principal("ops", None, frozenset({"encryption:admin"})).fleet is False
    assert Principal("ops", None).permissions == frozenset()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"algorithms": ()}, "non-empty allow-list"),
        ({"algorithms": ("none",)}, "without 'none'"),
        ({"algorithms": ("HS256", "NONE")}, "without 'none'"),
        ({"algorithms": ("HS256", "RS256")}, "do not mix"),
        ({"key": None}, "verification key"),
    ],
)
def test_settings_refuse_unsafe_allow_lists_and_a_missing_key(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        settings(**options)


def test_the_verification_key_is_not_in_the_settings_repr() -> None:
    assert SECRET not in repr(settings())
    assert SECRET not in repr(settings(key=None, keys_by_kid={"k1": SECRET}))


def test_a_valid_token_gives_its_subject_tenant_and_permissions() -> None:
    auth = JwtAuthorizer(settings())
    principal = auth.authenticate(token(permissions=["encryption:encrypt", "encryption:read"]))
    assert principal == Principal(
        "alice", "acme", frozenset({"encryption:encrypt", "encryption:read"})
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("encryption:read  encryption:audit", {"encryption:read", "encryption:audit"}),
        (["encryption:read", 7, None], {"encryption:read"}),
        ({"encryption:read": True}, set()),
        (42, set()),
    ],
)
def test_permissions_are_a_list_or_a_space_separated_string(value: Any, expected: set[str]) -> None:
    principal = JwtAuthorizer(settings()).authenticate(token(permissions=value))
    assert principal.permissions == frozenset(expected)


def test_the_claim_names_are_configurable() -> None:
    auth = JwtAuthorizer(settings(permissions_claim="scp", tenant_claim="org"))
    principal = auth.authenticate(token(scp="encryption:read", org="globex", permissions=None))
    assert (principal.tenant, principal.permissions) == ("globex", frozenset({"encryption:read"}))


@pytest.mark.parametrize(
    "bad",
    [
        {"exp": None},
        {"sub": None},
        {"sub": ""},
        {"sub": "x" * 257},
        {"sub": 5},
        {"iss": "someone-else"},
        {"iss": None},
        {"aud": "another-api"},
        # Times are read when the test runs, not when it is collected (a full run can take
        # many minutes between the two), and lie well outside the 30 s leeway.
        {"exp": lambda: int(time.time()) - 600},
        {"nbf": lambda: int(time.time()) + 600},
        {"tenant_id": ""},
        {"tenant_id": 3},
        {"tenant_id": "acme", "permissions": ["encryption:read", FLEET_PERMISSION]},
    ],
)
def test_missing_or_bad_claims_are_the_uniform_401(bad: dict[str, Any]) -> None:
    claims = {name: value() if callable(value) else value for name, value in bad.items()}
    exc = refused(JwtAuthorizer(settings()), token(**claims))
    assert exc.status_code == 401
    assert exc.detail == "unauthorized"
    assert exc.headers == {"WWW-Authenticate": "Bearer"}


def test_authenticate_itself_lets_the_verification_error_through() -> None:
    # The guard calls authenticate() before the body is read and maps any error to 401.
    with pytest.raises(jwt.ExpiredSignatureError):
        JwtAuthorizer(settings()).authenticate(token(exp=int(time.time()) - 60))


def test_small_clock_skew_is_tolerated_within_the_leeway() -> None:
    auth = JwtAuthorizer(settings(leeway=30))
    principal = auth.authenticate(token(exp=int(time.time()) - 10))
    assert principal.subject == "alice"


def test_a_fleet_token_names_no_tenant() -> None:
    auth = JwtAuthorizer(settings())
    principal = auth.authenticate(
        token(tenant_id=None, permissions=[FLEET_PERMISSION, "encryption:read"])
    )
    assert principal.fleet is True and principal.tenant is None


@pytest.mark.parametrize("raw", ["", "a.b", "a.b.c.d", "é.b.c", "x" * 9000 + ".a.b"])
def test_tokens_that_are_not_three_ascii_parts_within_the_size_bound_are_refused(
    raw: str,
) -> None:
    assert refused(JwtAuthorizer(settings()), raw).status_code == 401


def test_the_algorithm_comes_from_the_settings_never_from_the_token() -> None:
    auth = JwtAuthorizer(settings())
    unsigned = jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]
    assert refused(auth, unsigned).status_code == 401
    hs512 = token(algorithm="HS512")
    assert refused(auth, hs512).status_code == 401


def _rsa() -> tuple[Any, bytes]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def test_public_key_tokens_are_checked_by_kid() -> None:
    private, public = _rsa()
    auth = JwtAuthorizer(settings(algorithms=("RS256",), key=None, keys_by_kid={"k1": public}))
    good = token(private, "RS256", headers={"kid": "k1"})
    assert auth.authenticate(good).subject == "alice"
    assert refused(auth, token(private, "RS256", headers={"kid": "k2"})).status_code == 401
    assert refused(auth, token(private, "RS256")).status_code == 401  # no kid at all


def test_a_single_key_checks_tokens_with_or_without_a_kid() -> None:
    auth = JwtAuthorizer(settings())
    assert auth.authenticate(token(headers={"kid": "any"})).subject == "alice"


def _hs256(claims_: dict[str, Any], secret: bytes) -> str:
    """An HS256 token signed by hand (PyJWT itself refuses a PEM key as an HMAC secret)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims_).encode())
    sig = b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def test_hmac_with_a_public_key_as_the_secret_is_refused() -> None:
    _, public = _rsa()
    # The attack: a verifier configured with a PEM public key takes it as the HMAC secret.
    auth = JwtAuthorizer(settings(key=public.decode()))
    assert refused(auth, _hs256(claims(), public)).status_code == 401
    # The same hand-made signature under a real secret is accepted: the refusal is the key's.
    assert (
        JwtAuthorizer(settings()).authenticate(_hs256(claims(), SECRET.encode())).subject == "alice"
    )


def _request(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "bearer"])
def test_the_dependency_wants_a_bearer_token(header: str | None) -> None:
    with pytest.raises(HTTPException) as info:
        JwtAuthorizer(settings())(_request(header))
    assert info.value.status_code == 401


def test_the_dependency_turns_any_parsing_failure_into_the_401() -> None:
    with pytest.raises(HTTPException) as info:
        JwtAuthorizer(settings())(_request("Bearer a.b.c"))  # not base64 JSON
    assert info.value.status_code == 401
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_the_dependency_accepts_any_case_of_the_scheme() -> None:
    principal = JwtAuthorizer(settings())(_request("bEaReR " + token()))
    assert principal.subject == "alice"


def test_unauthorized_is_one_response() -> None:
    first, second = unauthorized(), unauthorized()
    assert (first.status_code, first.detail, first.headers) == (
        second.status_code,
        second.detail,
        second.headers,
    )


def test_dev_secret_is_created_once_private_and_then_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret = dev_secret(data)
    assert len(secret) == 64 and int(secret, 16) >= 0
    path = data / "api-token.secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert dev_secret(data) == secret
    assert dev_secret(data, create=False) == secret


def test_dev_secret_refuses_a_missing_file_without_create_and_a_shared_one(
    tmp_path: Path,
) -> None:
    with pytest.raises(FileNotFoundError):
        dev_secret(tmp_path / "none", create=False)
    dev_secret(tmp_path)
    os.chmod(tmp_path / "api-token.secret", 0o640)
    with pytest.raises(PermissionError, match="group or others"):
        dev_secret(tmp_path)


def test_minted_tokens_pass_the_dev_settings(tmp_path: Path) -> None:
    auth = JwtAuthorizer(dev_settings(tmp_path))
    raw = mint_token(
        dev_secret(tmp_path), subject="bob", permissions=["encryption:decrypt"], tenant="acme"
    )
    assert auth.authenticate(raw) == Principal("bob", "acme", frozenset({"encryption:decrypt"}))
    fleet = mint_token(dev_secret(tmp_path), subject="ops", permissions=[FLEET_PERMISSION])
    assert auth.authenticate(fleet).fleet is True
    decoded = jwt.decode(fleet, options={"verify_signature": False})
    assert "tenant_id" not in decoded and decoded["exp"] - decoded["iat"] == 3600


def test_minted_tokens_expire_after_their_ttl(tmp_path: Path) -> None:
    raw = mint_token(SECRET, subject="bob", permissions=[], ttl=-60)
    assert refused(JwtAuthorizer(settings()), raw).status_code == 401


def test_mint_token_will_not_make_a_tenant_token_with_the_fleet_grant() -> None:
    with pytest.raises(ValueError, match="tenant-scoped"):
        mint_token(SECRET, subject="x", permissions=[FLEET_PERMISSION], tenant="acme")
