"""What an observer (the audit log, the metrics collector) takes from the service it watches.

Observers are handed an object satisfying :class:`ObservedService` (the
:class:`~greenlang_crypto.service.EncryptionService` does) and never import the service: they
read typed snapshots (:class:`~greenlang_crypto.stats.ServiceStats` and the branch-key and
shared-cache counters), a data directory, and a :class:`SystemKeyHandle` for the keys the
library keeps for itself (the audit chain root). Nothing here reaches the provider or the key
store beyond those two system-key calls.

State an observer publishes to other observers flows the same way, pushed rather than read:
the audit log calls its sink listeners (:class:`SinkStateSource`) when the sink goes down or
comes back, and the metrics collector keeps the last value it was given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from greenlang_crypto._core import DataKey
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.providers.base import GeneratedDataKey
from greenlang_crypto.stats import ServiceStats

__all__ = [
    "DataDirConfig",
    "GenerateSystemKey",
    "ObservedService",
    "PrimaryKeySource",
    "SinkListener",
    "SinkStateSource",
    "SystemKeyHandle",
    "UnwrapSystemKey",
]

#: Makes a new system key bound to a context: wrapped by the provider under the primary
#: wrapping key.
GenerateSystemKey = Callable[[EncryptionContext], GeneratedDataKey]
#: Unwraps a system key: ``(provider name, key id, wrapped, context) -> DataKey``; raises
#: :class:`~greenlang_crypto.exceptions.DecryptionError` when another provider wrapped it or it
#: does not unwrap.
UnwrapSystemKey = Callable[[str, str, bytes, EncryptionContext], DataKey]
#: Receives the audit sink's state: true when it took the last write, false when it did not.
SinkListener = Callable[[bool], None]


@dataclass(frozen=True, slots=True)
class SystemKeyHandle:
    """The two key-provider calls an observer may make, and the provider's name.

    Attributes:
        provider_name: The key provider's name (``local``, ``aws-kms``), stored beside a
            wrapped system key so a key wrapped by another provider is refused.
        generate: Makes a new system key bound to a context.
        unwrap: Unwraps a system key made by ``generate``.
    """

    provider_name: str
    generate: GenerateSystemKey
    unwrap: UnwrapSystemKey


@runtime_checkable
class DataDirConfig(Protocol):
    """The part of a service configuration an observer reads: its data directory."""

    @property
    def data_dir(self) -> str | os.PathLike[str]:
        """The directory of the service's local files (default dead-letter file goes there)."""
        ...


@runtime_checkable
class ObservedService(Protocol):
    """Everything an observer takes from the service it watches.

    Every member is a snapshot or a handle: reading them never calls the key provider or the
    key store (``system_keys`` calls the provider only when its functions are called).
    """

    @property
    def config(self) -> DataDirConfig:
        """The configuration; observers read only its ``data_dir``."""
        ...

    @property
    def per_operation_events(self) -> bool:
        """Whether every encrypt and decrypt is an event (else they are only counted)."""
        ...

    @property
    def system_keys(self) -> SystemKeyHandle:
        """The handle for the library's own keys (the audit chain root)."""
        ...

    def stats(self) -> ServiceStats:
        """One snapshot of the data-path statistics."""
        ...

    def branch_key_stats(self) -> Mapping[str, int]:
        """Branch-key counters: ``unwraps``, ``created``, ``derivations``, ``cached_keys``."""
        ...

    def key_cache_stats(self) -> Mapping[str, int]:
        """Outcomes of the shared Redis key cache by name (empty when none is configured)."""
        ...


@runtime_checkable
class SinkStateSource(Protocol):
    """Publishes the audit sink's up/down state to listeners (the audit log does)."""

    def add_sink_listener(self, listener: SinkListener) -> None:
        """Registers ``listener``: called with the current state at once, then at each change."""
        ...


@runtime_checkable
class PrimaryKeySource(Protocol):
    """A service that tells when its primary key version was made (the service does).

    Optional beside :class:`ObservedService`: the metrics collector exports the key's age
    only when the observed service has it. Reading it never calls the key store.
    """

    @property
    def primary_key_created_at(self) -> float:
        """When the primary key version was created (UNIX seconds), as last loaded."""
        ...
