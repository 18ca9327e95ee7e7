"""Typed statistics of an :class:`~greenlang_crypto.service.EncryptionService`.

:meth:`EncryptionService.stats` returns one :class:`ServiceStats`: a snapshot of the
data-path counters the Rust caches keep (operations, cache hits and misses, budgets, sampled
latency) and the failures the service counted. Observers (metrics, the audit log) receive the
``stats`` callable and read it when they need to, at scrape or flush time; reading it never
calls the key provider or the key store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CacheCounters", "LatencyHistogram", "OperationCount", "ServiceStats"]


@dataclass(frozen=True, slots=True)
class OperationCount:
    """Successful operations of one kind and data class.

    Attributes:
        count: Operations.
        bytes: Plaintext bytes they processed.
    """

    count: int
    bytes: int


@dataclass(frozen=True, slots=True)
class CacheCounters:
    """Counters of the encryption or the decryption DEK caches.

    Attributes:
        hits: Lookups served from the cache.
        misses: Lookups that went to the provider.
        evictions: Entries dropped by the size bound.
        expirations: Entries dropped at their TTL (or spent budget).
        size: Entries now.
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    size: int = 0

    @classmethod
    def from_mapping(cls, counts: Mapping[str, int]) -> CacheCounters:
        """Builds the counters from a Rust cache's ``stats()`` mapping."""
        return cls(
            hits=int(counts.get("hits", 0)),
            misses=int(counts.get("misses", 0)),
            evictions=int(counts.get("evictions", 0)),
            expirations=int(counts.get("expirations", 0)),
            size=int(counts.get("size", 0)),
        )


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """Sampled latency of cached operations (one call in ``sample_rate`` is timed).

    Attributes:
        bounds: Upper bounds of the buckets, in seconds, ascending.
        cumulative: Timed calls at or below each bound.
        sum_seconds: Total time of the timed calls.
        sampled: Timed calls.
        sample_rate: One call in this many is timed.
    """

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum_seconds: float
    sampled: int
    sample_rate: int


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """One snapshot of a service's data-path statistics.

    Attributes:
        operations: Successful operations by operation (``encrypt``, ``decrypt``) and data
            class.
        failures: Failed operations by ``(operation, error type)``.
        encrypt_cache: Counters of the encryption caches (both key-reference kinds).
        decrypt_cache: Counters of the decryption cache.
        oldest_dek_age_seconds: Age of the oldest cached encryption DEK.
        max_budget_used: Largest fraction of a cached DEK's message budget used.
        latency: Sampled latency by operation.
    """

    operations: Mapping[str, Mapping[str, OperationCount]]
    failures: Mapping[tuple[str, str], int]
    encrypt_cache: CacheCounters
    decrypt_cache: CacheCounters
    oldest_dek_age_seconds: float
    max_budget_used: float
    latency: Mapping[str, LatencyHistogram]

    def operation_total(self, operation: str) -> int:
        """Successful ``operation`` calls over every data class."""
        return sum(c.count for c in self.operations.get(operation, {}).values())
