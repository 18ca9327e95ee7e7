"""Service events and the observer protocols (audit log, metrics and others subscribe here).

Observers are called by the service; they never call it. An observer that raises never breaks
an encryption or decryption: the service logs the failure type and carries on. (Admin actions
that must fail closed when the audit sink is down check the sink themselves, before acting.)

Each event is a frozen dataclass (:class:`ServiceEvent` and its subclasses, one per event
name), made once per emission and given to every :class:`TypedServiceObserver`; observers
that only implement :class:`ServiceObserver` receive the event's name and fields instead.

Event fields never contain plaintext, key bytes or raw context values: contexts appear as
their SHA-256 digest (hex) and their ``data_class`` only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

__all__ = [
    "EVENTS",
    "BranchKeyCreated",
    "BranchKeyUnwrapped",
    "DecryptionFailed",
    "DecryptionPerformed",
    "EncryptionFailed",
    "EncryptionPerformed",
    "KeyAccessed",
    "KeyCacheHit",
    "KeyCacheLookup",
    "KeyCacheMiss",
    "KeyChangeGuard",
    "KeyGenerated",
    "KeyRetired",
    "KeyRewrapped",
    "KeyRotated",
    "OperationFailed",
    "OtherEvent",
    "ServiceEvent",
    "ServiceObserver",
    "TenantErased",
    "TypedServiceObserver",
    "make_event",
]


#: Every event name the service emits.
EVENTS = frozenset(
    {
        "encryption_performed",  # per-operation mode only; otherwise counted in Rust
        "decryption_performed",  # per-operation mode only
        "encryption_failed",
        "decryption_failed",
        "key_generated",  # a new DEK from the provider
        "key_accessed",  # a DEK unwrapped through the provider
        "key_cache_hit",  # per-operation mode only
        "key_cache_miss",
        "key_rotated",
        "key_rewrapped",
        "key_retired",
        "branch_key_created",  # a new branch key from the provider (GenerateDataKey)
        "branch_key_unwrapped",  # a branch key unwrapped through the provider (Decrypt)
        "tenant_erased",  # a tenant erasure's phase done (phase: erasing, then erased)
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEvent:
    """Base of every service event.

    Attributes:
        extra: Fields the emitter sent that this event type does not declare (kept, never
            dropped silently; non-secret by the same contract).
    """

    name: ClassVar[str] = ""
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def event_name(self) -> str:
        """The event's name (``key_rotated``, ``decryption_failed``...)."""
        return self.name

    def fields(self) -> dict[str, object]:
        """The fields that are set, as a mapping (``extra`` merged in)."""
        out: dict[str, object] = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("extra", "other_name") and getattr(self, f.name) is not None
        }
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptionPerformed(ServiceEvent):
    """One encryption (per-operation mode only; otherwise counted in Rust)."""

    name: ClassVar[str] = "encryption_performed"
    data_class: str | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DecryptionPerformed(ServiceEvent):
    """One decryption (per-operation mode only)."""

    name: ClassVar[str] = "decryption_performed"
    data_class: str | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationFailed(ServiceEvent):
    """A failed encryption or decryption (the two subclasses say which).

    Attributes:
        error_type: The exception class name.
        reason: The exception's ``reason`` (a stable, non-secret category).
    """

    error_type: str | None = None
    reason: str | None = None
    data_class: str | None = None
    context_digest: str | None = None
    key_version: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptionFailed(OperationFailed):
    """A failed encryption."""

    name: ClassVar[str] = "encryption_failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class DecryptionFailed(OperationFailed):
    """A failed decryption."""

    name: ClassVar[str] = "decryption_failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyCacheLookup(ServiceEvent):
    """A DEK cache lookup; the subclasses say whether it hit."""

    operation: str | None = None
    data_class: str | None = None
    key_version: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyCacheHit(KeyCacheLookup):
    """A DEK cache hit (per-operation mode only)."""

    name: ClassVar[str] = "key_cache_hit"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyCacheMiss(KeyCacheLookup):
    """A DEK cache miss (the provider is asked)."""

    name: ClassVar[str] = "key_cache_miss"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyGenerated(ServiceEvent):
    """A new key from the provider: a DEK, or a blind-index root key (``purpose``)."""

    name: ClassVar[str] = "key_generated"
    key_version: int | None = None
    key_id: str | None = None
    data_class: str | None = None
    context_digest: str | None = None
    key_reference: str | None = None
    fingerprint: str | None = None
    seconds: float | None = None
    purpose: str | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyAccessed(ServiceEvent):
    """A DEK unwrapped through the provider."""

    name: ClassVar[str] = "key_accessed"
    key_version: int | None = None
    key_reference: str | None = None
    dek_id: int | None = None
    data_class: str | None = None
    context_digest: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRotated(ServiceEvent):
    """A new primary key version (or a rotated branch key, ``purpose="branch"``)."""

    name: ClassVar[str] = "key_rotated"
    old_version: int | None = None
    new_version: int | None = None
    key_id: str | None = None
    kms_on_demand: bool | None = None
    purpose: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRewrapped(ServiceEvent):
    """Stored DEKs rewrapped under a new wrapping key."""

    name: ClassVar[str] = "key_rewrapped"
    key_id: str | None = None
    count: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRetired(ServiceEvent):
    """Versions retired, or a wrapping, index or branch key retired (``purpose``)."""

    name: ClassVar[str] = "key_retired"
    min_version: int | None = None
    deleted_stored_deks: int | None = None
    purpose: str | None = None
    key_id: str | None = None
    version: int | None = None
    count: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BranchKeyCreated(ServiceEvent):
    """A branch key created (and wrapped) by the provider."""

    name: ClassVar[str] = "branch_key_created"
    branch_id: str | None = None
    scope: str | None = None
    key_version: int | None = None
    key_id: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BranchKeyUnwrapped(ServiceEvent):
    """A branch key unwrapped through the provider."""

    name: ClassVar[str] = "branch_key_unwrapped"
    branch_id: str | None = None
    scope: str | None = None
    key_version: int | None = None
    fingerprint: str | None = None
    seconds: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantErased(ServiceEvent):
    """A phase of a tenant erasure done.

    ``erasing``: no instance encrypts for the tenant any more; then ``erased``: its keys are
    deleted. The tenant appears only as a digest (``tenant_digest``).
    """

    name: ClassVar[str] = "tenant_erased"
    phase: str | None = None
    tenant_digest: str | None = None
    purpose: str | None = None
    stored_deks: int | None = None
    branch_keys: int | None = None
    count: int | None = None
    instances: int | None = None
    began: bool | None = None
    completed: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OtherEvent(ServiceEvent):
    """An event whose name has no type of its own (all its fields are in ``extra``)."""

    other_name: str = ""

    @property
    def event_name(self) -> str:
        """The emitted name."""
        return self.other_name


_TYPES: dict[str, type[ServiceEvent]] = {
    cls.name: cls
    for cls in (
        EncryptionPerformed,
        DecryptionPerformed,
        EncryptionFailed,
        DecryptionFailed,
        KeyCacheHit,
        KeyCacheMiss,
        KeyGenerated,
        KeyAccessed,
        KeyRotated,
        KeyRewrapped,
        KeyRetired,
        BranchKeyCreated,
        BranchKeyUnwrapped,
        TenantErased,
    )
}


def make_event(name: str, fields: Mapping[str, object]) -> ServiceEvent:
    """The typed event for ``name`` built from ``fields``.

    Fields the type declares become attributes; any other field goes to ``extra``. A name
    with no type of its own becomes an :class:`OtherEvent`.
    """
    cls = _TYPES.get(name)
    if cls is None:
        return OtherEvent(other_name=name, extra=dict(fields))
    declared = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: v for k, v in fields.items() if k in declared}
    extra = {k: v for k, v in fields.items() if k not in declared}
    return cls(extra=extra, **known)


@runtime_checkable
class ServiceObserver(Protocol):
    """Receives service events by name and fields."""

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        """Handles one event. ``fields`` are non-secret (see the module docstring)."""
        ...


@runtime_checkable
class TypedServiceObserver(Protocol):
    """Receives service events as typed objects (the audit log and the metrics do)."""

    def on_service_event(self, event: ServiceEvent) -> None:
        """Handles one event (non-secret by the module's contract)."""
        ...


@runtime_checkable
class KeyChangeGuard(Protocol):
    """An observer that must record a key-state change before the change happens.

    The audit log implements it. The service wraps every method that changes key state
    (rotate, rewrap, retire, index-key rotation and retirement, destroying a wrapping key) in
    the context managers of all its guards, so no front door can skip the record.
    """

    def key_change(
        self, action: str, details: Mapping[str, object]
    ) -> AbstractContextManager[None]:
        """Returns a context manager for one key-state change.

        Entering it writes the intent record and raises (for example
        ``AuditSinkUnavailableError``) when that record cannot be stored, so the change never
        happens unaudited. Leaving it records success, or failure with the error type.
        """
        ...
