"""A stand-in for the service, as observers see it: the ObservedService protocol and no more.

Tests of the audit log and the metrics bind to it to show they need nothing else from a
service; the system keys come straight from a local provider (no key store, no service).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from greenlang_crypto._core import DataKey
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import DecryptionError
from greenlang_crypto.observing import SystemKeyHandle
from greenlang_crypto.providers.base import GeneratedDataKey, KeyLimits
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.stats import CacheCounters, OperationCount, ServiceStats


def local_system_keys(data_dir: Path) -> SystemKeyHandle:
    """A handle on a local provider in ``data_dir`` (a master key is created when missing)."""
    provider = LocalKeyProvider(data_dir)
    if not provider.versions():
        provider.create_master_key()
    key_id = provider.current_key_id()

    def generate(ctx: EncryptionContext) -> GeneratedDataKey:
        return provider.generate_data_key(key_id, ctx, KeyLimits())

    def unwrap(name: str, kid: str, wrapped: bytes, ctx: EncryptionContext) -> DataKey:
        if name != provider.name:  # as the service does: another provider's key is refused
            raise DecryptionError()
        return provider.decrypt_data_key(kid, wrapped, ctx, KeyLimits())

    return SystemKeyHandle(provider.name, generate, unwrap)


@dataclass
class StubConfig:
    """Only the data directory."""

    data_dir: Path


@dataclass
class ObservedStub:
    """Counters the test sets by hand, served as the snapshots an observer reads.

    ``ops`` maps ``(operation, data class)`` to a count; ``stats_reads`` counts snapshots.
    """

    config: StubConfig
    system_keys: SystemKeyHandle
    per_operation_events: bool = False
    ops: dict[tuple[str, str], int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    branch: dict[str, int] = field(default_factory=dict)
    redis: dict[str, int] = field(default_factory=dict)
    stats_reads: int = 0

    def stats(self) -> ServiceStats:
        self.stats_reads += 1
        operations: dict[str, dict[str, OperationCount]] = {}
        for (op, dc), n in self.ops.items():
            operations.setdefault(op, {})[dc] = OperationCount(n, n * 10)
        return ServiceStats(
            operations=operations,
            failures=dict(self.failures),
            encrypt_cache=CacheCounters(hits=3, misses=1, size=1),
            decrypt_cache=CacheCounters(),
            oldest_dek_age_seconds=0.0,
            max_budget_used=0.0,
            latency={},
        )

    def branch_key_stats(self) -> dict[str, int]:
        return dict(self.branch)

    def key_cache_stats(self) -> dict[str, int]:
        return dict(self.redis)


def observed_stub(data_dir: Path, *, per_operation_events: bool = False) -> ObservedStub:
    """A stub whose data directory and system keys are in ``data_dir``."""
    return ObservedStub(StubConfig(data_dir), local_system_keys(data_dir), per_operation_events)
