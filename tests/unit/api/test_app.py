"""The served application (:mod:`greenlang_crypto.api.app`): health, metrics, safe errors,
embedding in a host app, and ``build_stack`` on a new data directory.

In process, with an authorizer that returns a fixed principal; the app with JWTs over real
HTTP, a host app served by uvicorn and processes racing on a new directory are covered in
``tests/api``.
"""

from __future__ import annotations

import base64
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from greenlang_crypto.api.app import (
    Stack,
    _HealthCache,
    build_stack,
    create_app,
    health_router,
    metrics_router,
    mount_encryption_api,
)
from greenlang_crypto.api.auth import Principal
from greenlang_crypto.api.routes import API_PREFIX
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import ConfigurationError
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


# -- embedding in a host application ------------------------------------------------------------


class Order(BaseModel):
    sku: str
    quantity: int


class OutOfStockError(Exception):
    """The host's own error, answered by the host's own handler."""


class HostAuthError(Exception):
    """Raised by a host authorizer; the host has a handler for it."""


def _host_app() -> FastAPI:
    host = FastAPI()

    @host.exception_handler(OutOfStockError)
    async def out_of_stock(request: Request, exc: OutOfStockError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"error": "out of stock"})

    @host.post("/orders")
    def place(order: Order) -> dict[str, str]:
        if order.quantity > 10:
            raise OutOfStockError
        return {"sku": order.sku}

    @host.get("/crash")
    def crash() -> None:
        raise RuntimeError("host bug")

    return host


def test_mounting_leaves_the_host_apps_errors_alone(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = _host_app()
    handlers = dict(host.exception_handlers)
    mount_encryption_api(host, stack.service, stack.audit, authorizer=lambda: PRINCIPAL)
    assert host.exception_handlers == handlers
    with TestClient(host, raise_server_exceptions=False) as client:
        # The host's route: FastAPI's own 422, field by field.
        bad = client.post("/orders", json={"quantity": "many"})
        assert bad.status_code == 422
        detail = bad.json()["detail"]
        assert isinstance(detail, list)
        assert {tuple(e["loc"]) for e in detail} == {("body", "sku"), ("body", "quantity")}
        assert {e["type"] for e in detail} == {"missing", "int_parsing"}
        # The host's handler still answers the host's exception.
        r = client.post("/orders", json={"sku": "x", "quantity": 11})
        assert (r.status_code, r.json()) == (409, {"error": "out of stock"})
        assert client.post("/orders", json={"sku": "x", "quantity": 1}).json() == {"sku": "x"}
        # The host's unhandled error is the host's default 500, not the API's body.
        crash = client.get("/crash")
        assert crash.status_code == 500 and "internal error" not in crash.text
        # The API's routes keep their typed errors.
        r = client.post(f"{API_PREFIX}/encrypt", json={"plaintext": "secret-4111", "x": 1})
        assert (r.status_code, r.json()) == (422, {"detail": "invalid request"})
        assert "4111" not in r.text
        other = {"tenant_id": "globex", "data_class": "pii"}
        r = client.post(f"{API_PREFIX}/encrypt", json={"plaintext": "aGk=", "context": other})
        assert (r.status_code, r.json()) == (403, {"detail": "forbidden"})

        def broken(*args: Any, **kwargs: Any) -> bytes:
            raise RuntimeError("secret detail")

        monkeypatch.setattr(stack.service, "encrypt", broken)
        r = client.post(f"{API_PREFIX}/encrypt", json={"plaintext": "aGk=", "context": CTX})
        assert (r.status_code, r.json()) == (500, {"detail": "internal error"})
        # Metrics and health are routers of their own, not mounted with the API.
        assert client.get("/metrics").status_code == 404
        assert client.get("/healthz").status_code == 404


def test_a_host_http_error_handler_does_not_reshape_the_apis_errors(stack: Stack) -> None:
    host = FastAPI()

    @host.exception_handler(StarletteHTTPException)
    async def shaped(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"error": {"code": 1}})

    mount_encryption_api(host, stack.service, stack.audit, authorizer=lambda: PRINCIPAL)
    with TestClient(host, raise_server_exceptions=False) as client:
        assert client.get("/nowhere").json() == {"error": {"code": 1}}
        other = {"tenant_id": "globex", "data_class": "pii"}
        r = client.post(f"{API_PREFIX}/encrypt", json={"plaintext": "aGk=", "context": other})
        assert (r.status_code, r.json()) == (403, {"detail": "forbidden"})
        r = client.post(
            f"{API_PREFIX}/decrypt",
            json={"ciphertext": "AAAA", "context": CTX, "reason": "probe"},
        )
        assert (r.status_code, r.json()) == (400, {"detail": "decryption failed"})


def test_the_hosts_handler_answers_its_own_authorizers_exception(stack: Stack) -> None:
    def authorizer() -> Principal:
        raise HostAuthError

    host = FastAPI()

    @host.exception_handler(HostAuthError)
    async def login(request: Request, exc: HostAuthError) -> JSONResponse:
        return JSONResponse(status_code=401, content={"login": "/sso"})

    mount_encryption_api(host, stack.service, stack.audit, authorizer=authorizer)
    bare = FastAPI()
    mount_encryption_api(bare, stack.service, stack.audit, authorizer=authorizer)
    body = {"plaintext": "aGk=", "context": CTX}
    with TestClient(host, raise_server_exceptions=False) as client:
        r = client.post(f"{API_PREFIX}/encrypt", json=body)
        assert (r.status_code, r.json()) == (401, {"login": "/sso"})
    # Without a handler of the host's, it is the API's bare 500.
    with TestClient(bare, raise_server_exceptions=False) as client:
        r = client.post(f"{API_PREFIX}/encrypt", json=body)
        assert (r.status_code, r.json()) == (500, {"detail": "internal error"})


def test_metrics_and_health_routers_are_placed_by_the_host(stack: Stack) -> None:
    host = FastAPI()
    host.include_router(metrics_router(stack.registry), prefix="/internal")
    host.include_router(health_router(stack.service, stack.audit), prefix="/probe")
    with TestClient(host) as client:
        assert client.get("/metrics").status_code == 404
        metrics = client.get("/internal/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "gl_encryption_audit_sink_up 1.0" in metrics.text
        health = client.get("/probe/healthz")
        assert health.json() == {
            "status": "ok",
            "checks": {"kms": True, "key_store": True, "audit_sink": True},
        }
    # Neither is in the host's OpenAPI document.
    assert not any("metrics" in p or "healthz" in p for p in host.openapi()["paths"])


def test_the_health_router_answers_503_while_the_audit_sink_is_locked(stack: Stack) -> None:
    host = FastAPI()
    host.include_router(health_router(stack.service, stack.audit, ttl=0.0))
    sink: Any = stack.audit.sink
    sink.timeout = 0.3
    sink.close()  # reconnects with the short timeout
    with TestClient(host) as client:
        assert client.get("/healthz").status_code == 200
        blocker = sqlite3.connect(sink.path, timeout=0.1, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            r = client.get("/healthz")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert r.status_code == 503
        assert r.json()["status"] == "degraded" and r.json()["checks"]["audit_sink"] is False
        assert client.get("/healthz").status_code == 200


# -- build_stack on a new data directory --------------------------------------------------------


def test_build_stack_refuses_an_uninitialized_directory_and_creates_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "new"
    with pytest.raises(ConfigurationError, match="greenlang-crypto init"):
        build_stack(EncryptionServiceConfig(data_dir=data), flush_interval=60.0)
    assert not data.exists()


def test_build_stack_initializes_a_new_directory_when_asked(tmp_path: Path) -> None:
    data = tmp_path / "new" / "crypto"
    config = EncryptionServiceConfig(data_dir=data)
    ctx = EncryptionContext(tenant_id="acme", data_class="pii")
    first = build_stack(config, flush_interval=60.0, initialize_if_missing=True)
    try:
        sealed = first.service.encrypt(b"row", ctx)
        versions = [(v.version, v.wrapping_key_id) for v in first.service.versions()]
    finally:
        first.close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    keys = sorted((data / "master-keys").glob("master-v*.key"))
    assert len(keys) == 1 and stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    key_bytes = keys[0].read_bytes()
    # Nothing was left beside it under a temporary name.
    assert [p.name for p in data.parent.iterdir()] == ["crypto"]
    # Asked again, it finds the key and the keyring: same key, old data readable.
    again = build_stack(config, flush_interval=60.0, initialize_if_missing=True)
    try:
        assert [(v.version, v.wrapping_key_id) for v in again.service.versions()] == versions
        assert again.service.decrypt(sealed, ctx) == b"row"
    finally:
        again.close()
    assert keys[0].read_bytes() == key_bytes
    assert len(list((data / "master-keys").glob("master-v*.key"))) == 1


def test_an_empty_directory_is_initialized_and_a_foreign_one_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    s = build_stack(EncryptionServiceConfig(data_dir=empty), initialize_if_missing=True)
    s.close()
    assert len(list((empty / "master-keys").glob("master-v*.key"))) == 1
    # A directory holding something else (or a key store whose master key is gone) is not
    # taken over: a new key would not open what is there.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keystore.db").write_bytes(b"someone's keyring")
    with pytest.raises(ConfigurationError, match="holds no master key"):
        build_stack(EncryptionServiceConfig(data_dir=foreign), initialize_if_missing=True)
    assert [p.name for p in foreign.iterdir()] == ["keystore.db"]
    assert (foreign / "keystore.db").read_bytes() == b"someone's keyring"
    # A file where the directory should be: the same typed refusal, the file untouched.
    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    with pytest.raises(ConfigurationError, match="is not a directory"):
        build_stack(EncryptionServiceConfig(data_dir=afile), initialize_if_missing=True)
    assert afile.read_bytes() == b"x"


FLEET_READER = Principal("ops", None, frozenset({"encryption:audit", "encryption:fleet"}))


def _echoing_host(*classes: type[BaseException]) -> FastAPI:
    """A host whose handlers echo the exception text, as many applications' handlers do."""
    host = FastAPI()

    async def echo(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=418, content={"echo": repr(exc)})

    for cls in classes:
        host.add_exception_handler(cls, echo)
    return host


def test_a_library_error_is_never_handed_to_a_hosts_handler_for_a_builtin_class(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ValueError raised inside the library (a bug, or a driver's error that names what it
    # was given) is the API's bare 500, even when the host registered a handler for
    # ValueError that echoes the message, as many applications do for their own code.
    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise ValueError("plaintext card 4111")

    monkeypatch.setattr(stack.service, "encrypt", broken)
    host = _echoing_host(ValueError, LookupError)
    mount_encryption_api(host, stack.service, stack.audit, authorizer=lambda: PRINCIPAL)
    with TestClient(host, raise_server_exceptions=False) as client:
        r = client.post(f"{API_PREFIX}/encrypt", json={"plaintext": "aGk=", "context": CTX})
        assert (r.status_code, r.json()) == (500, {"detail": "internal error"}), r.text
        # The host's own routes still reach its handler.

        @host.get("/own")
        def own() -> None:
            raise ValueError("host's own")

        r = client.get("/own")
        assert r.status_code == 418 and "host's own" in r.text


def test_a_library_error_escaping_a_route_keeps_its_typed_answer(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from greenlang_crypto.exceptions import GreenlangCryptoError, KeyStoreUnavailableError

    def unreachable(*args: Any, **kwargs: Any) -> list[Any]:
        raise KeyStoreUnavailableError("key store at db.internal:5432 unreachable")

    monkeypatch.setattr(stack.audit, "query", unreachable)
    for host in (_echoing_host(GreenlangCryptoError), FastAPI()):
        mount_encryption_api(host, stack.service, stack.audit, authorizer=lambda: FLEET_READER)
        with TestClient(host, raise_server_exceptions=False) as client:
            r = client.get(f"{API_PREFIX}/audit")
            assert (r.status_code, r.json()) == (503, {"detail": "service unavailable"})


@pytest.mark.integration
def test_a_new_directory_is_not_given_a_master_key_for_a_keyring_it_cannot_open(
    tmp_path: Path,
) -> None:
    # With a shared key store (PostgreSQL) the keyring is not in the data directory. A new,
    # empty directory (a volume not mounted, the wrong path) next to a store that already
    # holds a keyring must not get a fresh master key: the service would start, seal new
    # data under a key no other instance has, and read none of the old data.
    from tests.conftest import pg_private_database

    ctx = EncryptionContext(tenant_id="acme", data_class="pii")
    with pg_private_database("glc_app_init") as url:
        first = build_stack(
            EncryptionServiceConfig(data_dir=tmp_path / "right", key_store_url=url),
            flush_interval=60.0,
            initialize_if_missing=True,
        )
        try:
            sealed = first.service.encrypt(b"row", ctx)
        finally:
            first.close()
        wrong = tmp_path / "wrong"
        with pytest.raises(ConfigurationError, match="already holds a keyring") as refused:
            build_stack(
                EncryptionServiceConfig(data_dir=wrong, key_store_url=url),
                flush_interval=60.0,
                initialize_if_missing=True,
            )
        assert url.rpartition("@")[0] not in str(refused.value)  # no credentials named
        assert not wrong.exists()
        # The right directory still opens the keyring and its data.
        again = build_stack(
            EncryptionServiceConfig(data_dir=tmp_path / "right", key_store_url=url),
            flush_interval=60.0,
            initialize_if_missing=True,
        )
        try:
            assert again.service.decrypt(sealed, ctx) == b"row"
        finally:
            again.close()
