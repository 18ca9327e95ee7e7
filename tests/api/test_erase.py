"""``POST /keys/erase-tenant`` with JWTs and the guard: in process, then over real HTTP against
``greenlang-crypto serve``, its audit chain checked by ``audit verify`` afterwards."""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from greenlang_crypto.api.app import Stack
from greenlang_crypto.audit import AuditQuery
from greenlang_crypto.service import tenant_digest

from .conftest import TokenFactory, bearer
from .served import API, Served, cli, serve

ERASE = f"{API}/keys/erase-tenant"
ERASER = ["encryption:erase", "encryption:fleet"]


def _ctx(tenant: str) -> dict[str, str]:
    return {"tenant_id": tenant, "data_class": "pii"}


def _seal(http: Any, token: str, tenant: str, data: bytes) -> str:
    r = http.post(
        f"{API}/encrypt",
        json={"plaintext": base64.b64encode(data).decode(), "context": _ctx(tenant)},
        headers=bearer(token),
    )
    assert r.status_code == 200, r.text
    sealed: str = r.json()["ciphertext"]
    return sealed


def _open(http: Any, token: str, tenant: str, sealed: str) -> Any:
    return http.post(
        f"{API}/decrypt",
        json={"ciphertext": sealed, "context": _ctx(tenant), "reason": "erase test"},
        headers=bearer(token),
    )


def test_erasure_through_the_guard(
    client: TestClient, stack: Stack, make_token: TokenFactory
) -> None:
    acme = make_token(["encryption:encrypt", "encryption:decrypt"], tenant="acme")
    sealed = _seal(client, acme, "acme", b"acme row")
    # The guard refuses before the body is read: the same opaque 403 for every reason.
    refused = [
        make_token(["encryption:admin", "encryption:fleet"], tenant=None),
        make_token(["encryption:erase"], tenant="acme"),
        make_token(["encryption:erase"], tenant=None),
    ]
    for token in refused:
        r = client.post(ERASE, json={"tenant_id": "acme", "reason": "r"}, headers=bearer(token))
        assert (r.status_code, r.json()) == (403, {"detail": "forbidden"})
    r = client.post(ERASE, json={"tenant_id": "acme", "reason": "r"})
    assert (r.status_code, r.json()) == (401, {"detail": "unauthorized"})
    assert _open(client, acme, "acme", sealed).status_code == 200
    # Its body is bounded by its schema: a larger one is refused unread.
    eraser = bearer(make_token(ERASER, tenant=None, subject="dpo"))
    r = client.post(
        ERASE,
        content=b"{" + b" " * 20_000 + b"}",
        headers={**eraser, "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    r = client.post(ERASE, json={"tenant_id": "acme", "reason": "offboarding"}, headers=eraser)
    assert r.status_code == 200, r.text
    assert r.json()["completed"] is True and r.json()["stored_deks_destroyed"] == 1
    r = _open(client, acme, "acme", sealed)
    assert (r.status_code, r.json()) == (400, {"detail": "decryption failed"})
    stack.audit.flush()
    records = stack.audit.query(AuditQuery(action="tenant_erase"))
    assert [(x.entry.outcome, x.entry.actor) for x in records] == [
        ("intent", "dpo"),
        ("success", "dpo"),
    ]
    assert {x.entry.details["tenant_digest"] for x in records} == {tenant_digest("acme")}
    # The refusals were counted for the audit log, by route.
    client.app.state.glc_refusals.flush()  # type: ignore[attr-defined]
    stack.audit.flush()
    (counted,) = stack.audit.query(AuditQuery(action="access_refused"))
    assert counted.entry.details[f"route:POST {ERASE}"] == 4


def test_erasure_while_the_audit_sink_is_locked_is_503_and_erases_nothing(
    client: TestClient, stack: Stack, make_token: TokenFactory
) -> None:
    acme = make_token(["encryption:encrypt", "encryption:decrypt"], tenant="acme")
    eraser = bearer(make_token(ERASER, tenant=None))
    sealed = _seal(client, acme, "acme", b"kept")
    sink: Any = stack.audit.sink
    sink.timeout = 0.3
    sink.close()  # reconnects with the short timeout
    # Another process holds the audit database: the intent record cannot be written.
    blocker = sqlite3.connect(sink.path, timeout=0.1, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        r = client.post(ERASE, json={"tenant_id": "acme", "reason": "r"}, headers=eraser)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert (r.status_code, r.json()) == (503, {"detail": "audit log unavailable"})
    assert stack.service.is_erased(base64.b64decode(sealed)) is False
    assert _open(client, acme, "acme", sealed).status_code == 200
    stack.audit.flush()
    assert stack.audit.query(AuditQuery(action="tenant_erase")) == []
    # With the sink back, the same request erases.
    r = client.post(ERASE, json={"tenant_id": "acme", "reason": "r"}, headers=eraser)
    assert r.status_code == 200, r.text
    assert stack.service.is_erased(base64.b64decode(sealed)) is True


# -- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path) as s:
        yield s


@pytest.mark.integration
def test_served_erasure_shreds_one_tenant_and_the_chain_verifies(server: Served) -> None:
    acme = server.token("encryption:encrypt,encryption:decrypt", tenant="acme", subject="app")
    globex = server.token("encryption:encrypt,encryption:decrypt", tenant="globex")
    admin = server.token("encryption:admin,encryption:fleet", subject="ops")
    eraser = server.token("encryption:erase,encryption:fleet", subject="dpo")
    with httpx.Client(base_url=server.base, timeout=30) as http:
        kept = _seal(http, globex, "globex", b"globex row")
        gone = _seal(http, acme, "acme", b"acme row")
        body = {"tenant_id": "acme", "reason": "contract ended"}
        for token in (admin, acme):
            r = http.post(ERASE, json=body, headers=bearer(token))
            assert (r.status_code, r.json()) == (403, {"detail": "forbidden"})
        r = http.post(ERASE, json={"tenant_id": "", "reason": "x"}, headers=bearer(eraser))
        assert (r.status_code, r.json()) == (422, {"detail": "invalid request"})
        assert _open(http, acme, "acme", gone).status_code == 200
        r = http.post(ERASE, json=body, headers={**bearer(eraser), "X-Request-ID": "gdpr-17"})
        assert r.status_code == 200, r.text
        assert r.headers["X-Request-ID"] == "gdpr-17"
        report = r.json()
        assert (report["tenant_id"], report["stored_deks_destroyed"]) == ("acme", 1)
        r = _open(http, acme, "acme", gone)
        assert (r.status_code, r.json()) == (400, {"detail": "decryption failed"})
        assert base64.b64decode(_open(http, globex, "globex", kept).json()["plaintext"]) == (
            b"globex row"
        )
        time.sleep(0.5)  # the served audit log flushes every 0.2 s
    server.stop()
    verified = cli(server.data_dir, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    tail = cli(server.data_dir, "audit", "tail", "-n", "200").stdout
    assert '"request_id": "gdpr-17"' in tail and tenant_digest("acme") in tail
    assert '"acme"' not in tail and "tenant:acme" not in tail
