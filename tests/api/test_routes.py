"""The routes in-process: round trips, tenant checks, strict base64, no request echo in error
bodies, a permission on every admin route, audit sink outages, audit record content."""

from __future__ import annotations

import base64
import sqlite3
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from greenlang_crypto.api import PERMISSION_ATTR, create_app
from greenlang_crypto.api.app import Stack
from greenlang_crypto.api.auth import JwtAuthorizer
from greenlang_crypto.api.routes import API_PREFIX
from greenlang_crypto.audit import AuditQuery

from .conftest import ALL, TENANT, TokenFactory, bearer

CTX = {"tenant_id": TENANT, "data_class": "pii"}
SECRET_TEXT = b"4111 1111 1111 1111 / do-not-echo-me"
# Keys, rotation, rewrap, audit reads and status are fleet-wide: they take a token that names
# no tenant and holds the fleet grant.
FLEET = [*ALL, "encryption:fleet"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _encrypt(client: TestClient, token: str, data: bytes = SECRET_TEXT) -> dict[str, Any]:
    r = client.post(
        f"{API_PREFIX}/encrypt",
        json={"plaintext": b64(data), "context": CTX},
        headers=bearer(token),
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_encrypt_decrypt_round_trip_is_audited(
    client: TestClient, stack: Stack, make_token: TokenFactory
) -> None:
    token = make_token()
    env = _encrypt(client, token)
    assert env["key_version"] == 1
    assert base64.b64decode(env["ciphertext"]) != SECRET_TEXT
    r = client.post(
        f"{API_PREFIX}/decrypt",
        json={"ciphertext": env["ciphertext"], "context": CTX, "reason": "ticket-42"},
        headers={**bearer(token), "X-Request-ID": "req-123"},
    )
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["plaintext"]) == SECRET_TEXT
    assert r.headers["X-Request-ID"] == "req-123"
    stack.audit.flush()
    rec = stack.audit.query(AuditQuery(action="decryption_performed", actor="alice"))
    single = [x for x in rec if x.entry.request_id == "req-123"]
    assert len(single) == 1
    e = single[0].entry
    assert (e.reason, e.outcome, e.key_version, e.data_class) == ("ticket-42", "success", 1, "pii")
    assert e.context_digest is not None and len(e.context_digest) == 64
    aggregated = [x for x in rec if x.entry.details.get("aggregated")]
    assert aggregated and aggregated[0].entry.details["count"] == 1
    enc = stack.audit.query(AuditQuery(action="encryption_performed", actor="alice"))
    assert enc[0].entry.details["count"] == 1
    # Audit record content: no plaintext or raw context values anywhere in the records.
    dump = repr([x.to_dict() for x in stack.audit.tail(100)])
    assert "do-not-echo-me" not in dump and TENANT not in dump


def test_tenant_must_match_token(client: TestClient, make_token: TokenFactory) -> None:
    env = _encrypt(client, make_token())
    other = make_token(tenant="tenant-b")
    r = client.post(
        f"{API_PREFIX}/decrypt",
        json={"ciphertext": env["ciphertext"], "context": CTX, "reason": "x"},
        headers=bearer(other),
    )
    assert r.status_code == 403
    r = client.post(
        f"{API_PREFIX}/encrypt",
        json={"plaintext": b64(b"x"), "context": CTX},
        headers=bearer(make_token(tenant=None)),
    )
    assert r.status_code == 403


def test_decrypt_failures_are_opaque_and_audited(
    client: TestClient, stack: Stack, make_token: TokenFactory
) -> None:
    token = make_token()
    env = base64.b64decode(_encrypt(client, token)["ciphertext"])
    tampered = env[:-1] + bytes([env[-1] ^ 1])
    r = client.post(
        f"{API_PREFIX}/decrypt",
        json={"ciphertext": b64(tampered), "context": CTX, "reason": "probe"},
        headers=bearer(token),
    )
    assert (r.status_code, r.json()) == (400, {"detail": "decryption failed"})
    r = client.post(
        f"{API_PREFIX}/decrypt",
        json={"ciphertext": b64(b"\x01garbage"), "context": CTX, "reason": "probe"},
        headers=bearer(token),
    )
    assert (r.status_code, r.json()) == (400, {"detail": "decryption failed"})
    stack.audit.flush()
    failed = stack.audit.query(AuditQuery(action="decryption_performed", outcome="failure"))
    assert len(failed) == 2 and all(f.entry.reason == "probe" for f in failed)


@pytest.mark.parametrize(
    "plaintext",
    [
        "aGVsbG8",  # missing padding
        "aGVs bG8=",  # embedded space
        "aGVsbG8=\n",  # trailing newline
        "aGVsbG8=\u00e9",  # non-ASCII
        "aGVs-G8_",  # URL-safe alphabet
        "aGVsbG8===",  # too much padding
        12345,  # wrong type (no coercion)
    ],
)
def test_strict_base64_422_never_echoes(
    client: TestClient, make_token: TokenFactory, plaintext: Any
) -> None:
    r = client.post(
        f"{API_PREFIX}/encrypt",
        json={"plaintext": plaintext, "context": CTX},
        headers=bearer(make_token()),
    )
    assert r.status_code == 422
    assert r.json() == {"detail": "invalid request"}


def test_validation_and_500_bodies_never_echo(
    client: TestClient, stack: Stack, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = b64(SECRET_TEXT)
    token = make_token()
    cases = [
        {"plaintext": secret, "context": CTX, "unexpected": secret},
        {"plaintext": secret, "context": {"tenant_id": TENANT}},
        {"plaintext": secret},
        {"plaintext": secret, "context": CTX, "associated_data": "%%%" + secret},
    ]
    for body in cases:
        r = client.post(f"{API_PREFIX}/encrypt", json=body, headers=bearer(token))
        assert r.status_code == 422
        assert secret not in r.text and "do-not-echo" not in r.text
    r = client.post(
        f"{API_PREFIX}/encrypt",
        content=b'{"plaintext": "' + secret.encode() + b'", broken',
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and secret not in r.text

    def boom(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError(f"unexpected failure with {args[0]!r}")

    monkeypatch.setattr(stack.service, "encrypt", boom)
    r = client.post(
        f"{API_PREFIX}/encrypt", json={"plaintext": secret, "context": CTX}, headers=bearer(token)
    )
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error"}
    assert "do-not-echo" not in r.text and "Traceback" not in r.text


def test_app_is_not_in_debug_mode(app: FastAPI) -> None:
    assert app.debug is False


def _walk(routes: list[Any]) -> list[Any]:
    """Every endpoint route, descending into included routers (FastAPI nests them)."""
    out: list[Any] = []
    for route in routes:
        inner = getattr(route, "original_router", None) or getattr(route, "app", None)
        if hasattr(route, "dependant"):
            out.append(route)
        elif inner is not None and hasattr(inner, "routes"):
            out.extend(_walk(list(inner.routes)))
    return out


def test_every_api_route_requires_a_permission(app: FastAPI) -> None:
    api_routes = [r for r in _walk(list(app.routes)) if r.path.startswith(API_PREFIX)]
    # The walk must see every API operation the schema publishes.
    published = {p for p in app.openapi()["paths"] if p.startswith(API_PREFIX)}
    assert published and published <= {r.path for r in api_routes}
    assert len(api_routes) >= 7
    missing = []
    for route in api_routes:
        dependant = getattr(route, "dependant", None)
        deps = dependant.dependencies if dependant is not None else []
        if not any(getattr(d.call, PERMISSION_ATTR, None) for d in deps):
            missing.append(route.path)
    assert not missing, f"routes without a permission dependency: {missing}"


def test_keys_status_rotate_and_audit_trail(
    client: TestClient, stack: Stack, make_token: TokenFactory
) -> None:
    admin = make_token(FLEET, subject="root", tenant=None)
    r = client.get(f"{API_PREFIX}/keys", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["primary_version"] == 1
    r = client.post(f"{API_PREFIX}/keys/rotate", json={"reason": "yearly"}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    assert r.json() == {"old_version": 1, "new_version": 2}
    r = client.post(f"{API_PREFIX}/keys/rotate", headers=bearer(admin))
    assert r.json() == {"old_version": 2, "new_version": 3}
    st = client.get(f"{API_PREFIX}/status", headers=bearer(admin)).json()
    assert st["primary_version"] == 3 and st["audit_sink_up"] is True
    stack.audit.flush()
    rotations = stack.audit.query(AuditQuery(action="key_rotate", actor="root"))
    assert [(x.entry.outcome, x.entry.key_version) for x in rotations] == [
        ("intent", 1),
        ("success", 2),
        ("intent", 2),
        ("success", 3),
    ]
    assert rotations[0].entry.reason == "yearly"
    assert stack.audit.query(AuditQuery(action="key_rotated"))  # the service's own event
    assert stack.audit.verify().ok


def test_audit_route_filters_and_pages(
    client: TestClient, stack: Stack, make_token: TokenFactory
) -> None:
    for i in range(7):
        stack.audit.record("test_action", actor=f"op{i % 2}", details={"i": i})
    token = make_token(["encryption:audit", "encryption:fleet"], subject="auditor", tenant=None)
    url = f"{API_PREFIX}/audit"
    r = client.get(url, params={"action": "test_action", "limit": 3}, headers=bearer(token))
    page1 = r.json()
    assert [x["details"]["i"] for x in page1["records"]] == [0, 1, 2]
    r = client.get(
        url,
        params={"action": "test_action", "limit": 3, "after_seq": page1["next_after_seq"]},
        headers=bearer(token),
    )
    assert [x["details"]["i"] for x in r.json()["records"]] == [3, 4, 5]
    r = client.get(url, params={"actor": "op1", "action": "test_action"}, headers=bearer(token))
    assert [x["details"]["i"] for x in r.json()["records"]] == [1, 3, 5]
    assert r.json()["next_after_seq"] is None
    assert client.get(url, params={"limit": 0}, headers=bearer(token)).status_code == 422
    assert client.get(url, params={"limit": 501}, headers=bearer(token)).status_code == 422


def test_rewrap_moves_to_primary_without_returning_plaintext(
    client: TestClient, stack: Stack, make_token: TokenFactory
) -> None:
    env = _encrypt(client, make_token())
    fleet = make_token(FLEET, tenant=None)
    client.post(f"{API_PREFIX}/keys/rotate", headers=bearer(fleet))
    r = client.post(
        f"{API_PREFIX}/rewrap",
        json={"ciphertext": env["ciphertext"], "context": CTX, "reason": "migration"},
        headers=bearer(fleet),
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"ciphertext", "key_version"} and out["key_version"] == 2
    assert SECRET_TEXT not in base64.b64decode(out["ciphertext"])
    assert stack.service.decrypt(base64.b64decode(out["ciphertext"]), CTX) == SECRET_TEXT


class _DownSink:
    """Wraps a sink and fails every call while ``down`` is set (an audit sink outage)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.description = "flaky"

    def __getattr__(self, name: str) -> Any:
        from greenlang_crypto.exceptions import AuditSinkUnavailableError

        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*a: Any, **k: Any) -> Any:
            if self.down:
                raise AuditSinkUnavailableError("audit sink flaky unavailable")
            return attr(*a, **k)

        return call


def test_sink_down_rotate_is_503_and_nothing_changes(
    stack: Stack, settings: Any, make_token: TokenFactory
) -> None:
    flaky = _DownSink(stack.audit.sink)
    stack.audit.sink = flaky
    app = create_app(
        stack.service, stack.audit, authorizer=JwtAuthorizer(settings), registry=stack.registry
    )
    token = make_token()
    fleet = make_token(FLEET, tenant=None)
    with TestClient(app, raise_server_exceptions=False) as client:
        env = _encrypt(client, token)
        flaky.down = True
        versions_before = [(v.version, v.state) for v in stack.service.versions()]
        for path, body in (
            ("/keys/rotate", None),
            ("/rewrap", {"ciphertext": env["ciphertext"], "context": CTX}),
        ):
            r = client.post(f"{API_PREFIX}{path}", json=body, headers=bearer(fleet))
            assert (r.status_code, r.json()) == (503, {"detail": "audit log unavailable"})
        assert [(v.version, v.state) for v in stack.service.versions()] == versions_before
        assert stack.service.primary_version == 1
        # The data path keeps working and buffers its events; the gauge reports the sink down.
        r = client.post(
            f"{API_PREFIX}/decrypt",
            json={"ciphertext": env["ciphertext"], "context": CTX, "reason": "x"},
            headers=bearer(token),
        )
        assert r.status_code == 200
        stack.audit.flush()
        assert stack.audit.sink_up is False and stack.audit.buffered > 0
        assert b"gl_encryption_audit_sink_up 0.0" in client.get("/metrics").content
        assert client.get("/healthz").status_code == 503
        flaky.down = False
        assert stack.audit.flush() > 0
        assert stack.audit.sink_up is True and stack.audit.buffered == 0
        assert client.get("/healthz").json() == {
            "status": "ok",
            "checks": {"kms": True, "key_store": True, "audit_sink": True},
        }
        r = client.post(f"{API_PREFIX}/keys/rotate", headers=bearer(fleet))
        assert r.status_code == 200 and r.json()["new_version"] == 2
    assert stack.audit.verify().ok


def test_locked_sqlite_sink_times_out_instead_of_blocking(
    stack: Stack, make_token: TokenFactory, client: TestClient
) -> None:
    sink: Any = stack.audit.sink
    sink.timeout = 0.3
    sink.close()  # reconnect with the short timeout
    blocker = sqlite3.connect(sink.path, timeout=0.1, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        fleet = make_token(FLEET, tenant=None)
        r = client.post(f"{API_PREFIX}/keys/rotate", headers=bearer(fleet))
        assert r.status_code == 503
        assert time.monotonic() - started < 5
        assert stack.service.primary_version == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    r = client.post(f"{API_PREFIX}/keys/rotate", headers=bearer(fleet))
    assert r.status_code == 200


def test_metrics_and_healthz_endpoints(client: TestClient, make_token: TokenFactory) -> None:
    _encrypt(client, make_token())
    r = client.get("/metrics")
    assert r.status_code == 200
    text = r.text
    sample = 'gl_encryption_operations_total{data_class="pii",operation="encrypt",status="success"}'
    assert f"{sample} 1.0" in text
    assert TENANT not in text
    assert client.get("/healthz").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/metrics" not in schema["paths"] and "/healthz" not in schema["paths"]
