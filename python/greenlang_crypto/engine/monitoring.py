"""What the service reports: events to observers, counters, statistics, health and status.

:class:`Events` is the sink the other roles push to (events, failures, counts). It holds no
reference to them. :class:`Monitor` reads the runtime's caches and the key store to answer
``stats()``, ``status()`` and the health checks; none of its reads writes anything.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from greenlang_crypto import _forks
from greenlang_crypto.providers.base import ProviderHealth, ReportsRotationStatus

from ._common import ServiceStatus

if TYPE_CHECKING:
    from greenlang_crypto.context import EncryptionContext
    from greenlang_crypto.events import ServiceEvent, ServiceObserver, TypedServiceObserver
    from greenlang_crypto.stats import ServiceStats

    from .runtime import Runtime

__all__ = ["Events", "Monitor"]

_log = logging.getLogger("greenlang_crypto.service")

Latency = tuple[list[float], list[int], float, int, int]


class Events:
    """The observers, and the counters the data path pushes that Rust does not keep.

    Args:
        observers: Receivers of service events (audit, metrics).
        per_operation_events: Also emit an event for every encrypt and decrypt.
    """

    def __init__(
        self,
        observers: tuple[ServiceObserver | TypedServiceObserver, ...],
        per_operation_events: bool,
    ) -> None:
        self.observers = observers
        # The event classes are loaded only once there is an observer to receive them: a
        # process without observers (a one-shot CLI command) never pays for importing them.
        self._typed_observer: type[TypedServiceObserver] | None = None
        self._make_event: Callable[[str, Mapping[str, object]], ServiceEvent] | None = None
        #: The names of the encrypt and decrypt events (set with the event classes).
        self._operation_names = ("", "")
        if observers:
            self._load_event_types()
        # Per-operation events cost a Python call per encrypt/decrypt; by default operations
        # are counted in Rust atomics instead (see Monitor.operation_counts()).
        self.per_op = per_operation_events and bool(observers)
        self.failures: Counter[tuple[str, str]] = Counter()
        #: Decrypts done outside the cache, by (operation, data class).
        self.slow_counts: Counter[tuple[str, str]] = Counter()
        # Streams, counted once each when they finish: (operation, data class) -> [ops, bytes].
        self._stream_counts: dict[tuple[str, str], list[int]] = {}
        # Seals counted by encryption caches that have since been replaced, by data class.
        self._retired_counts: Counter[str] = Counter()
        self._retired_bytes: Counter[str] = Counter()
        self._lock = threading.Lock()
        # A parent thread may hold the lock at a fork; the child gets a fresh one.
        _forks.fresh_locks_after_fork(self, "_lock")

    def _load_event_types(self) -> None:
        if self._typed_observer is None:
            from greenlang_crypto import events

            self._make_event = events.make_event
            self._operation_names = (
                events.EncryptionPerformed.name,
                events.DecryptionPerformed.name,
            )
            self._typed_observer = events.TypedServiceObserver

    def add_observer(self, observer: ServiceObserver | TypedServiceObserver) -> None:
        """Adds an observer (for example an audit log created after the service)."""
        self._load_event_types()
        self.observers = (*self.observers, observer)

    def emit(self, event: str, **fields: object) -> None:
        """Hands one event to every observer; an observer's failure is logged, never raised."""
        typed: ServiceEvent | None = None
        typed_observer, make_event = self._typed_observer, self._make_event
        for observer in self.observers:
            try:
                if typed_observer is not None and isinstance(observer, typed_observer):
                    # One frozen event object per emission, shared by the typed observers.
                    if typed is None:
                        assert make_event is not None  # loaded with the observer type
                        typed = make_event(event, fields)
                    observer.on_service_event(typed)
                else:
                    cast("ServiceObserver", observer).on_event(event, fields)
            except Exception as exc:  # an observer must never break the data path
                _log.warning("observer %r failed on %s: %s", observer, event, type(exc).__name__)

    def failed(
        self, event: str, operation: str, exc: BaseException, ctx: EncryptionContext | None
    ) -> None:
        """Counts a failed operation and emits ``event`` describing it."""
        error_type = type(exc).__name__
        self.failures[(operation, error_type)] += 1
        if self.observers:
            self.emit(
                event,
                error_type=error_type,
                reason=getattr(exc, "reason", "other"),
                data_class=ctx.data_class if ctx is not None else None,
                context_digest=ctx.digest.hex() if ctx is not None else None,
                key_version=getattr(exc, "key_version", None),
            )

    def count_stream(self, operation: str, ctx: EncryptionContext, nbytes: int) -> None:
        """Counts one finished stream (once per stream, never per segment).

        An encrypted stream's operation is already counted in Rust (it reserves one message
        of its cached DEK, which the cache counts by data class); only its bytes are added.
        """
        with self._lock:
            slot = self._stream_counts.setdefault((operation, ctx.data_class), [0, 0])
            slot[0] += operation != "encrypt"
            slot[1] += nbytes
        if self.per_op:
            encrypted, decrypted = self._operation_names
            name = encrypted if operation == "encrypt" else decrypted
            self.emit(name, data_class=ctx.data_class, size=nbytes)

    def retire_cache_counts(self, counts: dict[str, tuple[int, int]]) -> None:
        """Keeps the seal counts of an encryption cache that is being replaced."""
        with self._lock:
            for label, (ops, nbytes) in counts.items():
                self._retired_counts[label] += ops
                self._retired_bytes[label] += nbytes

    def stream_counts(self) -> list[tuple[tuple[str, str], tuple[int, int]]]:
        """Finished streams so far: ((operation, data class), (operations, bytes))."""
        with self._lock:
            return [(k, (v[0], v[1])) for k, v in self._stream_counts.items()]

    def retired_counts(self) -> dict[str, tuple[int, int]]:
        """Seals of replaced encryption caches: data class -> (operations, bytes)."""
        with self._lock:
            return {k: (n, self._retired_bytes[k]) for k, n in self._retired_counts.items()}


class Monitor:
    """Statistics, health and status of one service.

    Args:
        runtime: The caches, key store and provider to read.
        events: The counters the data path pushes.
    """

    def __init__(self, runtime: Runtime, events: Events) -> None:
        self._runtime = runtime
        self._events = events

    def failure_counts(self) -> dict[tuple[str, str], int]:
        """Failures so far by (operation, error type)."""
        return dict(self._events.failures)

    def operation_counts(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Operations and plaintext bytes by operation and data class.

        Read from the Rust counters of the DEK caches, plus the rare decrypts done outside the
        cache.
        """
        enc = self._events.retired_counts()
        for cache in self._runtime.enc_caches.values():
            for label, (ops, nbytes) in cache.counts().items():
                prev = enc.get(label, (0, 0))
                enc[label] = (prev[0] + ops, prev[1] + nbytes)
        dec = dict(self._runtime.dec_cache.counts())
        for (op, label), n in self._events.slow_counts.items():
            if op == "decrypt":
                ops, nbytes = dec.get(label, (0, 0))
                dec[label] = (ops + n, nbytes)
        for (op, label), (n, nbytes) in self._events.stream_counts():
            into = enc if op == "encrypt" else dec
            ops, total = into.get(label, (0, 0))
            into[label] = (ops + n, total + nbytes)
        return {"encrypt": enc, "decrypt": dec}

    def latency(self) -> dict[str, Latency]:
        """Sampled latency histograms of cached encrypts and decrypts.

        Each value is ``(bounds, cumulative_counts, sum_seconds, sampled_count, sample_rate)``
        (see ``DekCache.latency``); the encrypt histogram merges every key-reference cache.
        """
        merged: Latency | None = None
        for cache in self._runtime.enc_caches.values():
            bounds, cumulative, total, count, rate = cache.latency()
            if merged is None:
                merged = (bounds, cumulative, total, count, rate)
            else:
                merged = (
                    bounds,
                    [a + b for a, b in zip(merged[1], cumulative, strict=True)],
                    merged[2] + total,
                    merged[3] + count,
                    rate,
                )
        assert merged is not None
        return {"encrypt": merged, "decrypt": self._runtime.dec_cache.latency()}

    def enc_stats(self) -> dict[str, int]:
        """The encryption caches' counters, summed over the key-reference kinds."""
        total: Counter[str] = Counter()
        for cache in self._runtime.enc_caches.values():
            total.update(cache.stats())
        return dict(total)

    def cache_stats(self) -> dict[str, dict[str, int]]:
        """Encryption and decryption cache counters (cheap; no provider call)."""
        return {"encrypt": self.enc_stats(), "decrypt": self._runtime.dec_cache.stats()}

    def cache_usage(self) -> dict[str, float]:
        """Gauges of the encryption caches (oldest DEK age, largest budget fraction used)."""
        usages = [c.usage() for c in self._runtime.enc_caches.values()]
        return {k: max(u[k] for u in usages) for k in usages[0]}

    def stats(self) -> ServiceStats:
        """One typed snapshot of the data-path statistics (no provider or key store call).

        Observers (metrics, the audit log's aggregates) are given this method and call it at
        scrape or flush time.
        """
        from greenlang_crypto.stats import (
            CacheCounters,
            LatencyHistogram,
            OperationCount,
            ServiceStats,
        )

        usage = self.cache_usage()
        return ServiceStats(
            operations={
                op: {dc: OperationCount(n, b) for dc, (n, b) in by_class.items()}
                for op, by_class in self.operation_counts().items()
            },
            failures=self.failure_counts(),
            encrypt_cache=CacheCounters.from_mapping(self.enc_stats()),
            decrypt_cache=CacheCounters.from_mapping(self._runtime.dec_cache.stats()),
            oldest_dek_age_seconds=float(usage.get("max_age_seconds", 0.0)),
            max_budget_used=float(usage.get("max_budget_used", 0.0)),
            latency={
                op: LatencyHistogram(tuple(b), tuple(c), total, sampled, rate)
                for op, (b, c, total, sampled, rate) in self.latency().items()
            },
        )

    def provider_health(self) -> ProviderHealth:
        """The key provider's health check (a KMS request with AWS KMS; never raises)."""
        try:
            return self._runtime.provider.health()
        except Exception as exc:  # health checks report, never raise
            return ProviderHealth(False, f"health check failed ({type(exc).__name__})")

    def key_store_health(self) -> bool:
        """Whether the key store answers a read now (one single-row query; never raises)."""
        try:
            self._runtime.store.epoch()
        except Exception:  # health checks report, never raise
            return False
        return True

    def rotation_status(self, key_id: str) -> dict[str, Any] | None:
        """The provider's automatic-rotation facts of wrapping key ``key_id``.

        None when the provider keeps no such record (the local provider: the keyring's own
        versions are the rotation history).

        Raises:
            KmsError: The provider could not report it.
        """
        provider = self._runtime.provider
        if not isinstance(provider, ReportsRotationStatus):
            return None
        return dict(provider.rotation_status(key_id))

    def status(self) -> ServiceStatus:
        """A snapshot of keys, cache counters and provider health.

        A read only: it writes no use counts and no keyring rows. Changes another instance
        committed are loaded first when the key store's change counter moved (one single-row
        read; loading them changes this process's view, nothing in the store).
        """
        runtime = self._runtime
        health = runtime.provider.health()
        runtime.keyring.refresh()
        snapshot = runtime.keyring.snapshot
        return ServiceStatus(
            provider=runtime.provider.name,
            provider_ok=health.ok,
            provider_detail=health.detail,
            primary_version=snapshot.primary.version,
            min_decryption_version=runtime.min_version,
            versions=list(snapshot.versions.values()),
            deks_by_version=runtime.store.count_deks_by_version(),
            usage_by_version=runtime.store.usage_by_version(),
            cache=self.cache_stats(),
            keyring_epoch=snapshot.epoch,
            instances=runtime.store.instances(),
        )
