"""The served application: the router plus ``/metrics``, ``/healthz`` and safe error handlers.

``create_app`` builds a FastAPI app (``debug=False``) around an already wired service, audit log
and metrics collector; :func:`build_stack` does that wiring from a configuration, the way
``greenlang-crypto serve`` does.

A host application embeds the same pieces one by one: :func:`mount_encryption_api` adds the
API routes (their errors answered by the routes themselves, so the host's exception handlers
and FastAPI's field-level 422 stay as they were), and :func:`metrics_router` and
:func:`health_router` give ``/metrics`` and ``/healthz`` as routers to include where it likes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from greenlang_crypto import _forks
from greenlang_crypto.api.guard import (
    BodyBudget,
    BodyGuard,
    default_body_limit,
    process_budget,
    route_policies,
)
from greenlang_crypto.api.refusals import RefusalAggregator
from greenlang_crypto.api.routes import API_PREFIX, build_router
from greenlang_crypto.audit import AuditLog
from greenlang_crypto.composition import (
    build_observed_service,
    init_local_data_dir,
    require_initialized,
)
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.metrics import EncryptionMetrics, exposition
from greenlang_crypto.service import EncryptionService

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "Stack",
    "build_stack",
    "create_app",
    "health_router",
    "metrics_router",
    "mount_encryption_api",
]

_log = logging.getLogger("greenlang_crypto.api")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's default 422 body echoes the offending input (which may be plaintext), so the
    # body here is a fixed message.
    return JSONResponse(status_code=422, content={"detail": "invalid request"})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    _log.error("unhandled error on %s: %s", request.url.path, type(exc).__name__)
    return JSONResponse(status_code=500, content={"detail": "internal error"})


def mount_encryption_api(
    app: FastAPI,
    service: EncryptionService,
    audit: AuditLog,
    *,
    authorizer: Callable[..., Any],
    max_body_bytes: int | None = None,
    max_buffered_body_bytes: int | None = None,
    refusal_interval: float = 60.0,
) -> RefusalAggregator:
    """Mounts ``/api/v1/encryption/*`` on a host app; its errors never echo requests.

    Nothing outside the prefix changes: the routes answer their own errors (a fixed 422, the
    uniform 401 and 403, a bare 500; see :class:`~greenlang_crypto.api.routes.ApiRoute`), so
    no exception handler is added to ``app`` and its own routes keep FastAPI's field-level
    422 and whatever handlers it registered. ``/metrics`` and ``/healthz`` are not mounted
    here: include :func:`metrics_router` and :func:`health_router` for them.

    Every request under the prefix is authenticated, and checked against its route's
    permission and scope, before its body is read; a body over its route's limit gets 413
    unread, and bodies wait for (or are refused with 503) room in a process-wide buffer budget
    (see :mod:`greenlang_crypto.api.guard`). Refusals are audited as counts per source and
    interval (see :mod:`greenlang_crypto.api.refusals`), written at the app's shutdown too.

    Args:
        app: The host application.
        service: The encryption service.
        audit: The audit log attached to ``service``.
        authorizer: A dependency returning a :class:`~greenlang_crypto.api.auth.Principal`;
            if it has ``authenticate(token)`` (as :class:`JwtAuthorizer` does), that and the
            permission check run before the body is read.
        max_body_bytes: Cap on any request body; each route's limit is the smaller of this
            and what its schema accepts. Default a little over the service's
            ``max_plaintext_bytes`` in base64 (:func:`~greenlang_crypto.api.guard.
            default_body_limit`).
        max_buffered_body_bytes: Bodies buffered at once by this app; default the budget
            shared by the whole process (:func:`~greenlang_crypto.api.guard.process_budget`).
        refusal_interval: Seconds between the audit records counting refusals.

    Returns:
        The refusal aggregator (its :meth:`~RefusalAggregator.flush` writes the counts now).

    Raises:
        ValueError: A route's body limit exceeds the buffer budget (it could never be served).
    """
    cap = max_body_bytes or default_body_limit(service.config.max_plaintext_bytes)
    refusals = RefusalAggregator(audit, interval=refusal_interval)
    router = build_router(service, audit, authorizer=authorizer, refusals=refusals)
    policies = route_policies(router.routes, max_body_bytes=cap, prefix=API_PREFIX)
    budget = BodyBudget(max_buffered_body_bytes) if max_buffered_body_bytes is not None else None
    largest = max((p.body_limit for p in policies.values()), default=0)
    capacity = (budget if budget is not None else process_budget()).capacity
    if largest > capacity:
        raise ValueError(
            f"max_buffered_body_bytes ({capacity}) is below the largest route body ({largest})"
        )
    app.add_middleware(
        BodyGuard,
        authenticate=getattr(authorizer, "authenticate", None),
        max_body_bytes=cap,
        prefix=API_PREFIX,
        policies=policies,
        budget=budget,
        refusals=refusals,
    )
    app.include_router(router)
    return refusals


def metrics_router(registry: CollectorRegistry | None = None) -> APIRouter:
    """A router serving ``GET /metrics``: ``registry`` in the Prometheus text format.

    Unauthenticated, as scrapers expect: expose it on a network only they reach. It is left
    out of the OpenAPI schema. Include it with a prefix to serve it elsewhere.

    Args:
        registry: The registry to expose, for example :attr:`Stack.registry` (default: the
            global one).
    """
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body, content_type = exposition(registry)
        return Response(content=body, media_type=content_type)

    return router


def health_router(service: EncryptionService, audit: AuditLog, *, ttl: float = 2.0) -> APIRouter:
    """A router serving ``GET /healthz``: the key provider, key store and audit sink checks.

    Answers 200 ``{"status": "ok", "checks": {...}}`` when every check passes, else 503 with
    ``"degraded"``; booleans only. Unauthenticated, so the checks run at most once per
    ``ttl`` seconds whatever the request rate. Left out of the OpenAPI schema.

    Args:
        service: The encryption service.
        audit: Its audit log.
        ttl: Seconds a check result is reused.
    """
    router = APIRouter()
    health = _HealthCache(service, audit, ttl=ttl)

    @router.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        checks = health.checks()
        ok = all(checks.values())
        return JSONResponse(
            status_code=200 if ok else 503,
            content={"status": "ok" if ok else "degraded", "checks": checks},
        )

    return router


@dataclass
class Stack:
    """A service wired to its observers.

    Attributes:
        service: The encryption service.
        audit: Its audit log (attached, flusher running).
        metrics: Its metrics collector (registered in ``registry``).
        registry: The Prometheus registry ``/metrics`` serves.
    """

    service: EncryptionService
    audit: AuditLog
    metrics: EncryptionMetrics
    registry: CollectorRegistry

    def close(self) -> None:
        """Flushes the audit log and closes the service."""
        self.audit.close()
        try:
            self.service.close()
        except sqlite3.ProgrammingError:
            # The SQLite key store opens a connection per worker thread with
            # check_same_thread=True, so closing one from another thread raises; those
            # connections are released when the process ends.
            _log.debug("key store connections of worker threads left to process exit")


def build_stack(
    config: EncryptionServiceConfig,
    *,
    audit_url: str | None = None,
    per_operation_events: bool = False,
    flush_interval: float = 10.0,
    audit_timeout: float = 2.0,
    anchors: Sequence[str] = (),
    initialize_if_missing: bool = False,
) -> Stack:
    """Builds the service with an audit log and a metrics collector as observers.

    With ``provider = "aws-kms"`` the KMS provider reports each call to the collector.
    ``anchors`` are URLs of further checkpoint anchors (see
    :func:`~greenlang_crypto.audit.anchors.open_anchor`), besides the default file beside a
    SQLite or JSON-lines log; a PostgreSQL log has no anchor unless one is named here.

    An embedded default (the local provider) must have been initialized (``greenlang-crypto
    init``) unless ``initialize_if_missing`` is true: a server pointed at the wrong or an
    unmounted directory should stop, not start sealing data under a new master key. With it,
    a new data directory is initialized as ``greenlang-crypto init`` would (see
    :func:`~greenlang_crypto.composition.init_local_data_dir`; processes starting together
    on a new directory share the one key), and an existing one that holds no master key is
    refused. Other providers' keys are the operator's, and the flag changes nothing for them.

    Raises:
        ConfigurationError: The embedded default is not initialized and
            ``initialize_if_missing`` is false (nothing was created), its data directory is
            not empty and holds no master key, it holds none while the configured key store
            already holds a keyring (made under a master key kept elsewhere), or the
            configuration is not usable.
        OutputError: ``initialize_if_missing`` and the data directory could not be written.
    """
    from prometheus_client import CollectorRegistry

    if initialize_if_missing:
        init_local_data_dir(config)
    else:
        require_initialized(config)

    built = build_observed_service(
        config,
        audit_url=audit_url,
        anchor_urls=anchors,
        per_operation_events=per_operation_events,
        flush_interval=flush_interval,
        audit_timeout=audit_timeout,
    )
    service, audit, metrics = built.service, built.audit, built.metrics
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return Stack(service, audit, metrics, registry)


def create_app(
    service: EncryptionService,
    audit: AuditLog,
    *,
    authorizer: Callable[..., Any],
    registry: CollectorRegistry | None = None,
    max_body_bytes: int | None = None,
    max_buffered_body_bytes: int | None = None,
    refusal_interval: float = 60.0,
) -> FastAPI:
    """The served app: the API router, ``/metrics`` and ``/healthz``.

    Args:
        service: The encryption service.
        audit: The audit log attached to ``service``.
        authorizer: A dependency returning a :class:`~greenlang_crypto.api.auth.Principal`.
        registry: The Prometheus registry to expose (default: the global one).
        max_body_bytes: Cap on any request body (see :func:`mount_encryption_api`).
        max_buffered_body_bytes: Bodies buffered at once (see :func:`mount_encryption_api`).
        refusal_interval: Seconds between refusal-count records.
    """
    from greenlang_crypto import __version__

    app = FastAPI(
        debug=False,
        title="greenlang-crypto admin API",
        version=__version__,
        docs_url=None,
        redoc_url=None,
    )
    refusals = mount_encryption_api(
        app,
        service,
        audit,
        authorizer=authorizer,
        max_body_bytes=max_body_bytes,
        max_buffered_body_bytes=max_buffered_body_bytes,
        refusal_interval=refusal_interval,
    )
    app.state.glc_refusals = refusals
    app.include_router(metrics_router(registry))
    app.include_router(health_router(service, audit))
    # This app is the library's own: whatever else reaches it (an unknown path's body, a
    # failing scrape) is answered without echoing the request either.
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    return app


class _HealthCache:
    """The health checks, run at most once per ``ttl`` seconds whatever the request rate.

    ``/healthz`` is unauthenticated, and each check costs a request elsewhere (a KMS call, a
    key store read, an audit probe write): without this bound anyone who can reach the port
    could turn a request flood into KMS throttling for the data path and a write load on the
    audit database. Concurrent requests wait for one run instead of starting their own.
    """

    def __init__(self, service: EncryptionService, audit: AuditLog, ttl: float = 2.0) -> None:
        self._service = service
        self._audit = audit
        self._ttl = ttl
        self._lock = threading.Lock()
        _forks.fresh_locks_after_fork(self, "_lock")
        self._at = float("-inf")
        self._last: dict[str, bool] = {}

    def checks(self) -> dict[str, bool]:
        with self._lock:
            # A write the log made meanwhile may have found its sink up or down: that news
            # is fresher than the cached probe.
            stale = self._last.get("audit_sink") != self._audit.sink_up
            if stale or time.monotonic() - self._at >= self._ttl:
                self._last = {
                    "kms": self._service.provider_health().ok,
                    "key_store": self._service.key_store_health(),
                    "audit_sink": _audit_ok(self._audit),
                }
                self._at = time.monotonic()
            return dict(self._last)


def _audit_ok(audit: AuditLog) -> bool:
    try:
        audit.require_available()
    except Exception:  # health checks report, never raise
        return False
    return True
