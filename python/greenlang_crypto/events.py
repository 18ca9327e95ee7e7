"""Service events and the observer protocol (audit log, metrics and others subscribe here).

Observers are called by the service; they never call it. An observer that raises never breaks
an encryption or decryption: the service logs the failure type and carries on. (Admin actions
that must fail closed when the audit sink is down check the sink themselves, before acting.)

Event fields never contain plaintext, key bytes or raw context values: contexts appear as
their SHA-256 digest (hex) and their ``data_class`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

__all__ = ["EVENTS", "KeyChangeGuard", "ServiceObserver"]

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
    }
)


@runtime_checkable
class ServiceObserver(Protocol):
    """Receives service events."""

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        """Handles one event. ``fields`` are non-secret (see the module docstring)."""
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
