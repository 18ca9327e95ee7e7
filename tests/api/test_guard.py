"""Authentication before the body is read, and a bounded body (413 unread)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from greenlang_crypto.api import Stack, create_app
from greenlang_crypto.api.auth import AuthSettings, JwtAuthorizer
from greenlang_crypto.api.guard import default_body_limit
from tests.api.conftest import TENANT, TokenFactory, bearer

ENCRYPT = "/api/v1/encryption/encrypt"
CTX = {"tenant_id": TENANT, "data_class": "pii"}


@pytest.fixture
def small(stack: Stack, settings: AuthSettings) -> Iterator[TestClient]:
    app = create_app(
        stack.service,
        stack.audit,
        authorizer=JwtAuthorizer(settings),
        registry=stack.registry,
        max_body_bytes=4096,
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _body(n: int) -> dict[str, object]:
    return {"plaintext": base64.b64encode(b"x" * n).decode(), "context": CTX}


def test_no_token_is_401_before_any_validation(small: TestClient) -> None:
    # A body that is not even JSON: validation would say 422; authentication comes first.
    res = small.post(ENCRYPT, content=b"{not json", headers={"Content-Type": "application/json"})
    assert res.status_code == 401
    res = small.post(ENCRYPT, json=_body(10), headers=bearer("not.a.token"))
    assert res.status_code == 401


def test_oversized_bodies_get_413_with_or_without_content_length(
    small: TestClient, make_token: TokenFactory
) -> None:
    headers = bearer(make_token())
    ok = small.post(ENCRYPT, json=_body(100), headers=headers)
    assert ok.status_code == 200, ok.text
    big = small.post(ENCRYPT, json=_body(10_000), headers=headers)
    assert big.status_code == 413
    assert "xxxx" not in big.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"plaintext": "'
        for _ in range(100):
            yield b"eHh4" * 64
        yield b'", "context": {"tenant_id": "' + TENANT.encode() + b'", "data_class": "pii"}}'

    streamed = small.post(
        ENCRYPT, content=chunks(), headers={**headers, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413


def test_default_limit_is_a_little_over_the_largest_plaintext() -> None:
    limit = default_body_limit(1000)
    assert len(base64.b64encode(b"x" * 1000)) < limit < 1000 * 2 + 256 * 1024


def test_rewrap_checks_the_token_tenant(client: TestClient, make_token: TokenFactory) -> None:
    enc = client.post(ENCRYPT, json=_body(16), headers=bearer(make_token()))
    assert enc.status_code == 200
    other = make_token(tenant="globex")
    res = client.post(
        "/api/v1/encryption/rewrap",
        json={"ciphertext": enc.json()["ciphertext"], "context": CTX},
        headers=bearer(other),
    )
    assert res.status_code == 403
