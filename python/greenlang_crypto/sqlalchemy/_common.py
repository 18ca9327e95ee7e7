"""Pieces shared by the column types, the blind indexes and the migration jobs.

The column types and the jobs must compute byte-identical associated data and contexts, or a
value written by one could not be read by the other; both build them here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenlang_crypto._core import ENVELOPE_MAGIC
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import InvalidArgumentError

if TYPE_CHECKING:
    from greenlang_crypto.service import EncryptionService

__all__ = [
    "ENVELOPE_MAGIC",
    "FromRow",
    "ServiceRef",
    "TenantSpec",
    "is_envelope",
    "location_aad",
    "resolve_service",
    "row_aad",
]

# ENVELOPE_MAGIC, the first byte of every envelope (docs/FORMAT.md), comes from the Rust core,
# its one home. It never occurs in UTF-8, so a stored text value and an envelope cannot be
# confused.

#: An EncryptionService, or a zero-argument callable returning one (so that models can be
#: declared at import time, before the application has built its service).
ServiceRef = Any


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


def resolve_service(ref: ServiceRef) -> EncryptionService:
    """Returns the service behind ``ref`` (the object itself or what the callable returns)."""
    if hasattr(ref, "encrypt") and hasattr(ref, "decrypt"):
        return ref  # type: ignore[no-any-return]
    if callable(ref):
        svc = ref()
        if not (hasattr(svc, "encrypt") and hasattr(svc, "decrypt")):
            raise InvalidArgumentError("the service callable did not return an EncryptionService")
        return svc  # type: ignore[no-any-return]
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

    __slots__ = ("_by_tenant", "_data_class", "_lock")

    def __init__(self, data_class: str) -> None:
        self._data_class = data_class
        self._by_tenant: dict[str, EncryptionContext] = {}
        self._lock = threading.Lock()

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
