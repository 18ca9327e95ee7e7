"""Pieces shared by the column types, the blind indexes and the migration jobs.

The column types and the jobs must compute byte-identical associated data and contexts, or a
value written by one could not be read by the other; both build them here.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, cast

from sqlalchemy.util import concurrency as _concurrency

from greenlang_crypto import _forks
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import InvalidArgumentError

if TYPE_CHECKING:
    from greenlang_crypto._core import BlindIndexKey
    from greenlang_crypto.service import EncryptionService

__all__ = [
    "ENVELOPE_MAGIC",
    "ColumnService",
    "FromRow",
    "ServiceRef",
    "TenantSpec",
    "in_async_greenlet",
    "is_envelope",
    "is_service",
    "location_aad",
    "off_the_loop",
    "resolve_service",
    "row_aad",
]

_T = TypeVar("_T")

#: First byte of every envelope (docs/FORMAT.md). It never occurs in UTF-8, so a stored text
#: value and an envelope cannot be confused.
ENVELOPE_MAGIC = 0xFA


class ColumnService(Protocol):
    """What the column types and blind indexes use of the service.

    :class:`~greenlang_crypto.service.EncryptionService` satisfies it. Written out so that the
    layer is type-checked against the service, and so that the front door's dependency on the
    service is this list and nothing more.
    """

    def encrypt(
        self, plaintext: bytes, context: EncryptionContext, *, associated_data: bytes | None = ...
    ) -> bytes:
        """Encrypts one value (see ``EncryptionService.encrypt``)."""
        ...

    def decrypt(
        self, ciphertext: bytes, context: EncryptionContext, *, associated_data: bytes | None = ...
    ) -> bytes:
        """Decrypts one value (see ``EncryptionService.decrypt``)."""
        ...

    def encrypt_batch(
        self,
        plaintexts: Sequence[bytes],
        context: EncryptionContext,
        *,
        associated_data: Sequence[bytes | None] | None = ...,
    ) -> list[bytes]:
        """Encrypts many values under one context in one call."""
        ...

    def value_encryptor(
        self,
        context: EncryptionContext,
        *,
        associated_data: bytes | None = ...,
        text: bool = ...,
        fallback: Callable[[Any], Any] | None = ...,
    ) -> Callable[[Any], Any]:
        """A per-value encrypt callable for database parameters."""
        ...

    def value_decryptor(
        self,
        context: EncryptionContext,
        *,
        associated_data: bytes | None = ...,
        text: bool = ...,
        fallback: Callable[[Any], Any] | None = ...,
    ) -> Callable[[Any], Any]:
        """A per-value decrypt callable for database results."""
        ...

    def blind_index_key(self, purpose: str, version: int | None = ...) -> BlindIndexKey:
        """The HMAC key of one blind index and key version."""
        ...

    def active_index_versions(self) -> list[int]:
        """Index key versions a lookup must match, the primary first."""
        ...


if TYPE_CHECKING:

    def _service_satisfies_protocol(svc: EncryptionService) -> ColumnService:
        # mypy fails here if the service's signatures drift from what this layer calls.
        return svc


#: A service, or a zero-argument callable returning one (so that models can be declared at
#: import time, before the application has built its service).
ServiceRef: TypeAlias = ColumnService | Callable[[], ColumnService]


@dataclass(frozen=True, slots=True)
class FromRow:
    """Take the tenant from an attribute of the ORM row being written or loaded.

    Attributes:
        attribute: The mapped attribute name (for example ``"tenant_id"``).
    """

    attribute: str


#: How the tenant of a column's encryption context is obtained: a fixed string, a zero-argument
#: callable (for example reading a ``ContextVar`` set per request), or :class:`FromRow`.
TenantSpec = str | Callable[[], str] | FromRow


def is_service(obj: object) -> bool:
    """Whether ``obj`` is a service rather than a callable returning one.

    Checked by the two methods every path uses, not with ``isinstance`` against the Protocol:
    this runs per value for columns whose tenant is chosen per call.
    """
    return hasattr(obj, "encrypt") and hasattr(obj, "decrypt")


def resolve_service(ref: ServiceRef) -> ColumnService:
    """Returns the service behind ``ref`` (the object itself or what the callable returns)."""
    if is_service(ref):
        return cast(ColumnService, ref)
    if callable(ref):
        svc = ref()
        if not is_service(svc):
            raise InvalidArgumentError("the service callable did not return an EncryptionService")
        return svc
    raise InvalidArgumentError("service must be an EncryptionService or a callable returning one")


def is_envelope(value: bytes) -> bool:
    """Whether a stored value is an envelope (by its magic byte; authenticity is not checked)."""
    return len(value) > 0 and value[0] == ENVELOPE_MAGIC


def location_aad(table: str, column: str) -> bytes:
    """Associated data binding a value to one table and column."""
    return f"{table}|{column}".encode()


def row_aad(table: str, column: str, pk: object, tenant_id: str | None) -> bytes:
    """Associated data binding a value to one row (primary key) and tenant as well.

    The primary key is rendered with ``str()``; composite keys are joined with ``,``. Each part
    is length-prefixed, so no two different locations share bytes.
    """
    pk_text = ",".join(str(p) for p in pk) if isinstance(pk, tuple) else str(pk)
    parts = (table, column, pk_text, tenant_id or "")
    return b"|".join(f"{len(p.encode())}:{p}".encode() for p in parts)


class ContextCache:
    """EncryptionContext objects per tenant, built once (each build canonicalizes in Rust)."""

    __slots__ = ("__weakref__", "_by_tenant", "_data_class", "_lock")

    def __init__(self, data_class: str) -> None:
        self._data_class = data_class
        self._by_tenant: dict[str, EncryptionContext] = {}
        self._lock = threading.Lock()
        _forks.fresh_locks_after_fork(self, "_lock")

    def get(self, tenant_id: str) -> EncryptionContext:
        """The context of ``tenant_id`` under this column's data class."""
        ctx = self._by_tenant.get(tenant_id)
        if ctx is None:
            ctx = EncryptionContext(tenant_id=tenant_id, data_class=self._data_class)
            with self._lock:
                if len(self._by_tenant) > 10_000:
                    # Bound the memory of many-tenant deployments; rebuilding costs ~1 us.
                    self._by_tenant.clear()
                self._by_tenant[tenant_id] = ctx
        return ctx


# SQLAlchemy 2.1 names it await_; 2.0 await_only (kept in 2.1 as a deprecated alias).
_await: Callable[[Any], Any] = getattr(_concurrency, "await_", None) or _concurrency.await_only


_getcurrent: Callable[[], object] | None
try:
    # By name: greenlet ships no type stubs, and it is optional (asyncio sessions need it).
    _getcurrent = importlib.import_module("greenlet").getcurrent
except ImportError:  # no greenlet installed: then no asyncio session either
    _getcurrent = None


def in_async_greenlet() -> bool:
    """Whether this runs inside the greenlet of SQLAlchemy's asyncio extension.

    The test ``sqlalchemy.util.concurrency.in_greenlet`` makes (the marker SQLAlchemy sets on
    its greenlets), done directly: it runs once per row-bound value read, and the shim around
    SQLAlchemy's own function costs ten times as much.
    """
    if _getcurrent is None:
        return False
    return getattr(_getcurrent(), "__sqlalchemy_greenlet_provider__", False) is True


def off_the_loop(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, moved to a worker thread when called under an asyncio session.

    SQLAlchemy's asyncio extension runs a flush, a statement's parameter processing and the
    ORM's row loading in a greenlet on the event loop's thread, so a KMS call made there
    (a DEK cache miss, an index key read) would stop every other task of the loop for its
    round trip. Inside that greenlet this hands ``fn`` to ``asyncio.to_thread`` and suspends
    the greenlet until it is done, as the asyncio drivers do for their own I/O; the loop keeps
    running other tasks meanwhile. Anywhere else (a sync session, a thread) ``fn`` runs here.
    Only the slow paths call this: a cache hit never leaves the caller's thread.
    """
    if not in_async_greenlet():
        return fn(*args)
    return cast("_T", _await(asyncio.to_thread(fn, *args)))


def import_path(path: str, expected: str) -> Any:
    """The object ``package.module:Name.attr`` names (a ``--model`` flag).

    The module is imported from the current directory or ``PYTHONPATH``. ``expected`` is
    the form shown when ``path`` is malformed, e.g. ``app.models:User.email``.

    Raises:
        InvalidArgumentError: The path is malformed, the module does not import, or an
            attribute does not exist.
    """
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path or not all(attr_path.split(".")):
        raise InvalidArgumentError(f"--model {path!r}: expected {expected}")
    # A console script's sys.path starts with its own directory, not the working one.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the application's module may fail in any way at import
        raise InvalidArgumentError(
            f"--model {path!r}: cannot import {module_name!r} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())})"
        ) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidArgumentError(f"--model {path!r}: no attribute {part!r}") from None
    return obj
