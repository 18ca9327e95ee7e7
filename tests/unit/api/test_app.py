"""The served application (:mod:`greenlang_crypto.api.app`): health, metrics, safe errors.

In process, with an authorizer that returns a fixed principal; the app with JWTs over real
HTTP is covered in ``tests/api``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from greenlang_crypto.api.app import Stack, _HealthCache, build_stack, create_app
from greenlang_crypto.api.auth import Principal
from greenlang_crypto.api.routes import API_PREFIX
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider

PRINCIPAL = Principal("alice", "acme", frozenset({"encryption:encrypt", "encryption:decrypt"}))
CTX = {"tenant_id": "acme", "data_class": "pii"}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    data = tmp_path / "data"
    LocalKeyProvider(data).create_master_key()
    s = build_stack(EncryptionServiceConfig(data_dir=data), flush_interval=60.0)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[TestClient]:
    app = create_app(
        stack.service, stack.audit, authorizer=lambda: PRINCIPAL, registry=stack.registry
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_build_stack_wires_the_observers(stack: Stack) -> None:
    assert stack.audit.sink_up
    names = {m.name for m in stack.registry.collect()}
    assert "gl_encryption_audit_sink_up" in names, names


def test_healthz_and_metrics(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "checks": {"kms": True, "key_store": True, "audit_sink": True},
    }
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "gl_encryption_audit_sink_up 1.0" in metrics.text
    # No interactive documentation is served.
    assert client.get("/docs").status_code == 404


def test_a_round_trip_through_the_mounted_api(client: TestClient) -> None:
    sealed = client.post(
        f"{API_PREFIX}/encrypt",
        json={"plaintext": base64.b64encode(b"card 4111").decode(), "context": CTX},
    )
    assert sealed.status_code == 200, sealed.text


def test_a_validation_error_echoes_nothing(client: TestClient) -> None:
    res = client.post(
        f"{API_PREFIX}/encrypt", json={"plaintext": "secret-value-4111", "unknown": 1}
    )
    assert res.status_code == 422
    assert res.json() == {"detail": "invalid request"}
    assert "4111" not in res.text


def test_an_unhandled_error_is_a_bare_500(
    client: TestClient, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(stack.service, "encrypt", broken)
    res = client.post(
        f"{API_PREFIX}/encrypt",
        json={"plaintext": base64.b64encode(b"x").decode(), "context": CTX},
    )
    assert res.status_code == 500
    assert res.json() == {"detail": "internal error"}


def test_a_buffer_budget_below_a_route_body_is_refused(stack: Stack) -> None:
    with pytest.raises(ValueError, match="max_buffered_body_bytes"):
        create_app(
            stack.service, stack.audit, authorizer=lambda: PRINCIPAL, max_buffered_body_bytes=10
        )


class _Probed:
    """A service and an audit log whose health probes are counted."""

    def __init__(self) -> None:
        self.probes = 0
        self.sink_up = True
        self.ok = True

    def provider_health(self) -> Any:
        self.probes += 1
        return type("Health", (), {"ok": self.ok})()

    def key_store_health(self) -> bool:
        return True

    def require_available(self) -> None:
        if not self.sink_up:
            raise RuntimeError("down")


def test_health_checks_run_at_most_once_per_ttl() -> None:
    probed = _Probed()
    cache = _HealthCache(probed, probed, ttl=3600.0)  # type: ignore[arg-type]
    assert cache.checks() == {"kms": True, "key_store": True, "audit_sink": True}
    probed.ok = False
    for _ in range(5):
        assert cache.checks()["kms"] is True
    assert probed.probes == 1
    # News from the audit log (its sink went down) is fresher than the cached probe.
    probed.sink_up = False
    assert cache.checks() == {"kms": False, "key_store": True, "audit_sink": False}
    assert probed.probes == 2
    expired = _HealthCache(probed, probed, ttl=0.0)  # type: ignore[arg-type]
    expired.checks()
    expired.checks()
    assert probed.probes == 4


def test_create_app_returns_a_fastapi_app(stack: Stack) -> None:
    app = create_app(stack.service, stack.audit, authorizer=lambda: PRINCIPAL)
    assert isinstance(app, FastAPI) and app.debug is False
    assert app.state.glc_refusals is not None
