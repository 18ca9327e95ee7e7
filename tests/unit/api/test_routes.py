"""The API router's own rules: strict payloads, error mapping, permission dependencies.

The helpers are called directly; one small app (the router alone, in process, with an
authorizer that returns a fixed principal) checks that the rules are wired to the routes.
The full app with JWTs, the guard and metrics is covered in ``tests/api/test_routes.py``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.requests import Request

from greenlang_crypto.api import routes
from greenlang_crypto.api.auth import FLEET_PERMISSION, Principal
from greenlang_crypto.api.routes import (
    API_PREFIX,
    PERMISSION_ATTR,
    SCOPE_ATTR,
    ContextModel,
    EncryptRequest,
    build_router,
    request_id,
    require_permission,
)
from greenlang_crypto.audit import AuditLog, AuditQuery, SqliteAuditSink
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    AuditSinkUnavailableError,
    ConfigurationError,
    DecryptionError,
    InvalidArgumentError,
    InvalidContextError,
    InvalidEnvelopeError,
    KeyNotFoundError,
    KeyRetiredError,
    KeyStateError,
    KeyVersionUnavailableError,
    KmsUnavailableError,
    PayloadTooLargeError,
)
from greenlang_crypto.service import EncryptionService, tenant_digest


def http_error(call: Any, *args: Any) -> HTTPException:
    with pytest.raises(HTTPException) as info:
        call(*args)
    return info.value


def test_base64_is_strict() -> None:
    assert routes._b64("aGk=") == b"hi"
    assert routes._b64("") == b""
    for bad in ("aGk", "aG k=", "aGk=\n", "a$k=", "aGk=aGk="):
        exc = http_error(routes._b64, bad)
        assert (exc.status_code, exc.detail) == (422, "invalid request")


@pytest.mark.parametrize(
    ("exc", "status", "detail"),
    [
        (PayloadTooLargeError("x"), 413, "payload too large"),
        (InvalidContextError("tenant 'secret'"), 422, "invalid request"),
        (InvalidArgumentError("x"), 422, "invalid request"),
        (TypeError("x"), 422, "invalid request"),
        (KeyVersionUnavailableError(9), 409, "key version 9 is not available in this keyring"),
        (KeyRetiredError(1, 3), 409, "key version 1 is retired (minimum decryption version is 3)"),
        (DecryptionError(), 400, "decryption failed"),
        (InvalidEnvelopeError("truncated at byte 3"), 400, "decryption failed"),
        (KeyNotFoundError("dek 5"), 400, "decryption failed"),
        (KeyStateError("retired"), 409, "key state does not allow this"),
        (KmsUnavailableError("region down"), 503, "key service unavailable"),
        (AuditSinkUnavailableError("disk"), 503, "audit log unavailable"),
        (ConfigurationError("path /secret"), 400, "request failed"),
    ],
)
def test_library_errors_map_to_responses_that_echo_nothing(
    exc: Exception, status: int, detail: str
) -> None:
    mapped = routes._error(exc)
    assert (mapped.status_code, mapped.detail) == (status, detail)


def test_an_error_from_outside_the_library_is_not_hidden() -> None:
    with pytest.raises(RuntimeError, match="bug"):
        routes._error(RuntimeError("bug"))


def test_the_key_version_is_read_from_an_envelope_header_or_none(tmp_path: Path) -> None:
    svc = EncryptionService.init_local(tmp_path)
    try:
        sealed = svc.encrypt(b"x", EncryptionContext(tenant_id="t", data_class="pii"))
    finally:
        svc.close()
    assert routes._key_version(sealed) == 1
    assert routes._key_version(b"not an envelope") is None


def _request(headers: dict[str, str] | None = None, path: str = "/") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(
        {"type": "http", "method": "POST", "path": path, "headers": raw, "client": ("10.0.0.7", 1)}
    )


def test_a_well_formed_request_id_is_echoed_and_anything_else_replaced() -> None:
    request, response = _request({"X-Request-ID": "abc.DEF-1_2"}), Response()
    assert request_id(request, response) == "abc.DEF-1_2"
    assert response.headers["X-Request-ID"] == "abc.DEF-1_2"
    assert request.state.glc_request_id == "abc.DEF-1_2"
    for bad in ("has space", "x" * 65, "<script>", ""):
        request, response = _request({"X-Request-ID": bad}), Response()
        rid = request_id(request, response)
        assert rid != bad and len(rid) == 32 and int(rid, 16) >= 0
        assert response.headers["X-Request-ID"] == rid
    assert len(request_id(_request(), Response())) == 32


class Counter:
    def __init__(self) -> None:
        self.noted: list[tuple[Any, ...]] = []

    def note(self, *args: Any) -> None:
        self.noted.append(args)


def _dependency(permission: str, scope: str, counter: Counter) -> Any:
    audit: Any = object()
    return require_permission(permission, lambda: None, audit, scope=scope, refusals=counter)  # type: ignore[arg-type]


def test_the_dependency_declares_its_permission_and_scope() -> None:
    dep = _dependency("encryption:audit", "fleet", Counter())
    assert getattr(dep, PERMISSION_ATTR) == "encryption:audit"
    assert getattr(dep, SCOPE_ATTR) == "fleet"
    with pytest.raises(ValueError, match="scope must be"):
        _dependency("encryption:audit", "global", Counter())


@pytest.mark.parametrize(
    ("scope", "principal", "reason"),
    [
        ("fleet", Principal("a", None, frozenset({"encryption:read"})), "permission"),
        ("fleet", Principal("a", None, frozenset({"encryption:admin"})), "fleet_scope"),
        (
            "fleet",
            Principal("a", "acme", frozenset({"encryption:admin", FLEET_PERMISSION})),
            "fleet_scope",
        ),
        ("tenant", Principal("a", None, frozenset({"encryption:admin"})), "no_tenant"),
    ],
)
def test_a_principal_without_the_permission_or_scope_is_refused_and_counted(
    scope: str, principal: Principal, reason: str
) -> None:
    counter = Counter()
    dep = _dependency("encryption:admin", scope, counter)
    exc = http_error(dep, _request(), principal)
    assert (exc.status_code, exc.detail) == (403, "forbidden")
    assert counter.noted == [("10.0.0.7", reason, "a", None)]


@pytest.mark.parametrize(
    ("scope", "principal"),
    [
        ("fleet", Principal("ops", None, frozenset({"encryption:admin", FLEET_PERMISSION}))),
        ("tenant", Principal("alice", "acme", frozenset({"encryption:admin"}))),
    ],
)
def test_an_allowed_principal_is_returned(scope: str, principal: Principal) -> None:
    counter = Counter()
    assert _dependency("encryption:admin", scope, counter)(_request(), principal) is principal
    assert counter.noted == []


def test_the_context_must_name_the_token_tenant() -> None:
    counter = Counter()
    ctx = EncryptionContext(tenant_id="acme", data_class="pii")
    routes._same_tenant(Principal("a", "acme"), ctx, counter, _request())  # type: ignore[arg-type]
    for principal, reason in [
        (Principal("a", "globex"), "tenant_mismatch"),
        (Principal("a", None), "no_tenant"),
    ]:
        exc = http_error(routes._same_tenant, principal, ctx, counter, _request())
        assert exc.status_code == 403
        assert counter.noted[-1][1] == reason


def test_request_models_are_strict_and_closed() -> None:
    ok = EncryptRequest.model_validate(
        {"plaintext": "aGk=", "context": {"tenant_id": "t", "data_class": "pii"}}
    )
    assert ok.context.extra == {}
    bad_bodies: list[dict[str, Any]] = [
        {"plaintext": 5, "context": {"tenant_id": "t", "data_class": "pii"}},
        {"plaintext": "a b", "context": {"tenant_id": "t", "data_class": "pii"}},
        {"plaintext": "aGk=", "context": {"tenant_id": "t", "data_class": "p i i"}},
        {"plaintext": "aGk=", "context": {"tenant_id": "", "data_class": "pii"}},
        {"plaintext": "aGk=", "context": {"tenant_id": "t", "data_class": "pii", "x": 1}},
        {"plaintext": "aGk=", "context": {"tenant_id": "t", "data_class": "pii"}, "more": 1},
    ]
    for body in bad_bodies:
        with pytest.raises(ValidationError):
            EncryptRequest.model_validate(body)
    with pytest.raises(ValidationError):
        ContextModel.model_validate(
            {"tenant_id": "t", "data_class": "d", "extra": {f"k{i}": "v" for i in range(33)}}
        )


# -- the router in a small app ---------------------------------------------------------------

TENANT = Principal("alice", "acme", frozenset({"encryption:encrypt", "encryption:decrypt"}))
CTX = {"tenant_id": "acme", "data_class": "pii"}


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[tuple[TestClient, AuditLog, list[Principal]]]:
    svc = EncryptionService.init_local(tmp_path / "keys")
    audit = AuditLog(SqliteAuditSink(tmp_path / "audit.db"), start_thread=False)
    audit.attach(svc)
    current = [TENANT]
    app = FastAPI()
    app.include_router(build_router(svc, audit, authorizer=lambda: current[0]))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, audit, current
    finally:
        audit.close()
        svc.close()


def test_every_route_declares_a_permission_dependency() -> None:
    audit: Any = object()
    router = build_router(object(), audit, authorizer=lambda: TENANT)  # type: ignore[arg-type]
    api_routes: list[Any] = [r for r in router.routes if r.path.startswith(API_PREFIX)]  # type: ignore[attr-defined]
    assert len(api_routes) == len(router.routes)
    assert {r.path for r in api_routes} == {
        f"{API_PREFIX}/{name}"
        for name in (
            "encrypt",
            "decrypt",
            "keys",
            "keys/rotate",
            "keys/erase-tenant",
            "rewrap",
            "audit",
            "status",
        )
    }
    for route in api_routes:
        calls = [d.call for d in route.dependant.dependencies]
        assert any(hasattr(c, PERMISSION_ATTR) for c in calls), route.path


def test_encrypt_then_decrypt_with_the_reason_audited(
    wired: tuple[TestClient, AuditLog, list[Principal]],
) -> None:
    client, audit, _ = wired
    sealed = client.post(
        f"{API_PREFIX}/encrypt",
        json={"plaintext": base64.b64encode(b"card 4111").decode(), "context": CTX},
        headers={"X-Request-ID": "req-1"},
    )
    assert sealed.status_code == 200, sealed.text
    assert sealed.headers["X-Request-ID"] == "req-1"
    assert sealed.json()["key_version"] == 1
    opened = client.post(
        f"{API_PREFIX}/decrypt",
        json={"ciphertext": sealed.json()["ciphertext"], "context": CTX, "reason": "support #12"},
    )
    assert opened.status_code == 200
    assert base64.b64decode(opened.json()["plaintext"]) == b"card 4111"
    audit.flush()
    via_api = [
        r.entry
        for r in audit.query(AuditQuery(action="decryption_performed"))
        if r.entry.details.get("via") == "api"
    ]
    assert [(e.reason, e.outcome, e.actor, e.key_version) for e in via_api] == [
        ("support #12", "success", "alice", 1)
    ]


def test_a_context_of_another_tenant_is_403_and_bad_input_422(
    wired: tuple[TestClient, AuditLog, list[Principal]],
) -> None:
    client = wired[0]
    other = client.post(
        f"{API_PREFIX}/encrypt",
        json={"plaintext": "aGk=", "context": {"tenant_id": "globex", "data_class": "pii"}},
    )
    assert other.status_code == 403
    bad = client.post(
        f"{API_PREFIX}/encrypt", json={"plaintext": "c2VjcmV0", "context": CTX, "x": "c2VjcmV0"}
    )
    assert bad.status_code == 422


def test_a_fleet_route_refuses_a_tenant_token(
    wired: tuple[TestClient, AuditLog, list[Principal]],
) -> None:
    client, _, current = wired
    current[0] = Principal("alice", "acme", frozenset({"encryption:read"}))
    assert client.get(f"{API_PREFIX}/status").status_code == 403
    current[0] = Principal("ops", None, frozenset({"encryption:read", FLEET_PERMISSION}))
    status = client.get(f"{API_PREFIX}/status")
    assert status.status_code == 200
    assert status.json()["provider"] == "local" and status.json()["primary_version"] == 1


# -- the route class: errors answered by the routes themselves ---------------------------------


def test_an_http_error_is_written_as_fastapis_default_would() -> None:
    r = routes._http_error(HTTPException(403, "forbidden", headers={"X-A": "1"}))
    assert (r.status_code, r.body, r.headers["x-a"]) == (403, b'{"detail":"forbidden"}', "1")
    # Statuses that carry no body get none.
    empty = routes._http_error(HTTPException(304))
    assert (empty.status_code, empty.body) == (304, b"")


class _HostError(ValueError):
    pass


def test_only_a_hosts_handler_for_the_errors_own_class_claims_it() -> None:
    app = FastAPI()
    request = Request({"type": "http", "app": app, "headers": []})
    assert not routes._host_handles(request, _HostError())
    app.add_exception_handler(Exception, lambda r, e: Response())
    assert not routes._host_handles(request, _HostError())  # a catch-all claims nothing
    app.add_exception_handler(ValueError, lambda r, e: Response())
    assert routes._host_handles(request, _HostError())
    assert not routes._host_handles(request, RuntimeError())
    assert not routes._host_handles(Request({"type": "http", "headers": []}), _HostError())


def test_the_router_answers_its_own_validation_errors(
    wired: tuple[TestClient, AuditLog, list[Principal]],
) -> None:
    client = wired[0]
    # The app has FastAPI's default handler only: the route itself answers, echoing nothing.
    default = client.app.exception_handlers[RequestValidationError]  # type: ignore[attr-defined]
    assert default.__module__ == "fastapi.exception_handlers"
    r = client.post(f"{API_PREFIX}/encrypt", json={"plaintext": "bm8gZWNobw==", "x": "zz-secret"})
    assert (r.status_code, r.json()) == (422, {"detail": "invalid request"})
    assert "zz-secret" not in r.text


# -- tenant erasure ----------------------------------------------------------------------------

ERASER = Principal("ops", None, frozenset({"encryption:erase", FLEET_PERMISSION}))
ERASE = f"{API_PREFIX}/keys/erase-tenant"


def _seal(client: TestClient, current: list[Principal], tenant: str) -> str:
    current[0] = Principal("app", tenant, frozenset({"encryption:encrypt"}))
    ctx = {"tenant_id": tenant, "data_class": "pii"}
    r = client.post(f"{API_PREFIX}/encrypt", json={"plaintext": "c2VjcmV0", "context": ctx})
    assert r.status_code == 200, r.text
    sealed: str = r.json()["ciphertext"]
    return sealed


def _open(client: TestClient, current: list[Principal], tenant: str, sealed: str) -> Any:
    current[0] = Principal("app", tenant, frozenset({"encryption:decrypt"}))
    ctx = {"tenant_id": tenant, "data_class": "pii"}
    return client.post(
        f"{API_PREFIX}/decrypt", json={"ciphertext": sealed, "context": ctx, "reason": "check"}
    )


def test_erasing_a_tenant_shreds_its_data_only_and_is_audited_by_digest(
    wired: tuple[TestClient, AuditLog, list[Principal]],
) -> None:
    client, audit, current = wired
    acme = _seal(client, current, "acme")
    globex = _seal(client, current, "globex")
    current[0] = ERASER
    r = client.post(
        ERASE,
        json={"tenant_id": "acme", "reason": "contract ended"},
        headers={"X-Request-ID": "erase-1"},
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["tenant_id"] == "acme"
    assert report["stored_deks_destroyed"] == 1 and report["branch_keys_destroyed"] == 0
    assert report["began"] is True and report["completed"] is True
    assert set(report) == {
        "tenant_id",
        "stored_deks_destroyed",
        "branch_keys_destroyed",
        "instances_acknowledged",
        "began",
        "completed",
        "epoch",
        "seconds",
        "kms_key_deletion_date",
    }
    assert report["kms_key_deletion_date"] is None  # acme has no KMS key of its own
    # Acme's data is gone for good (the same opaque answer as any missing key); globex's stays.
    gone = _open(client, current, "acme", acme)
    assert (gone.status_code, gone.json()) == (400, {"detail": "decryption failed"})
    assert base64.b64decode(_open(client, current, "globex", globex).json()["plaintext"]) == (
        b"secret"
    )
    # New data for the tenant id is sealed under a fresh key.
    fresh = _seal(client, current, "acme")
    assert _open(client, current, "acme", fresh).status_code == 200
    # One intent and one outcome, naming the tenant by digest only.
    audit.flush()
    records = audit.query(AuditQuery(action="tenant_erase"))
    assert [x.entry.outcome for x in records] == ["intent", "success"]
    for x in records:
        e = x.entry
        assert (e.actor, e.request_id, e.reason) == ("ops", "erase-1", "contract ended")
        assert e.details["tenant_digest"] == tenant_digest("acme")
    assert records[1].entry.details["stored_deks"] == 1
    assert records[1].entry.details["completed"] is True
    dump = repr([x.to_dict() for x in audit.tail(200)])
    assert "'acme'" not in dump and "tenant:acme" not in dump
    assert audit.verify().ok
    # Erasing again is no error: nothing written since, nothing destroyed.
    current[0] = ERASER
    again = client.post(ERASE, json={"tenant_id": "acme", "reason": "again"})
    assert again.status_code == 200 and again.json()["stored_deks_destroyed"] == 1  # the fresh one


@pytest.mark.parametrize(
    "body",
    [
        {"tenant_id": "", "reason": "r"},
        {"tenant_id": "a" * 257, "reason": "r"},
        {"tenant_id": 7, "reason": "r"},
        {"tenant_id": ["acme"], "reason": "r"},
        {"tenant_id": "acme"},
        {"tenant_id": "acme", "reason": ""},
        {"tenant_id": "acme", "reason": "r" * 501},
        {"tenant_id": "acme", "reason": "r", "scope": "service"},
        {"reason": "r"},
    ],
    ids=[
        "empty",
        "too-long",
        "number",
        "list",
        "no-reason",
        "empty-reason",
        "long-reason",
        "extra-field",
        "no-tenant",
    ],
)
def test_bad_erase_input_is_422_and_changes_nothing(
    wired: tuple[TestClient, AuditLog, list[Principal]], body: dict[str, Any]
) -> None:
    client, audit, current = wired
    acme = _seal(client, current, "acme")
    current[0] = ERASER
    r = client.post(ERASE, json=body)
    assert (r.status_code, r.json()) == (422, {"detail": "invalid request"})
    assert _open(client, current, "acme", acme).status_code == 200
    audit.flush()
    assert audit.query(AuditQuery(action="tenant_erase")) == []


def test_the_tenant_id_is_checked_by_the_context_rules() -> None:
    assert routes._tenant_id("acme") == "acme"
    # A string the schema's type and length allow, but no context can hold.
    exc = http_error(routes._tenant_id, "acme\ud800")
    assert (exc.status_code, exc.detail) == (422, "invalid request")


def test_a_lone_surrogate_tenant_id_is_422_and_changes_nothing(
    wired: tuple[TestClient, AuditLog, list[Principal]],
) -> None:
    client, audit, current = wired
    current[0] = ERASER
    # Refused while the body is parsed; the route's own check stands behind that.
    raw = b'{"tenant_id": "acme\\ud800", "reason": "r"}'
    r = client.post(ERASE, content=raw, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (422, {"detail": "invalid request"})
    audit.flush()
    assert audit.query(AuditQuery(action="tenant_erase")) == []


@pytest.mark.parametrize(
    "principal",
    [
        # A rotation operator: fleet-wide, but without the erase permission.
        Principal("ops", None, frozenset({"encryption:admin", FLEET_PERMISSION})),
        # A tenant's own application, even holding the permission.
        Principal("app", "acme", frozenset({"encryption:erase"})),
        # The permission without the fleet grant.
        Principal("ops", None, frozenset({"encryption:erase"})),
    ],
    ids=["admin", "tenant", "no-fleet-grant"],
)
def test_erasure_without_the_permission_is_an_opaque_403(
    wired: tuple[TestClient, AuditLog, list[Principal]], principal: Principal
) -> None:
    client, audit, current = wired
    acme = _seal(client, current, "acme")
    current[0] = principal
    r = client.post(ERASE, json={"tenant_id": "acme", "reason": "r"})
    assert (r.status_code, r.json()) == (403, {"detail": "forbidden"})
    assert _open(client, current, "acme", acme).status_code == 200
    audit.flush()
    assert audit.query(AuditQuery(action="tenant_erase")) == []
