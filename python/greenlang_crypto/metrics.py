"""Prometheus metrics, read from the observed service at scrape time by a custom collector.

Hot-path counters live in Rust atomics (ARCHITECTURE rule 5); :class:`EncryptionMetrics` turns
them into Prometheus samples only when Prometheus scrapes, so an encryption costs the same with
or without metrics. This module is the only one that imports ``prometheus_client``, and it does
so lazily: :class:`ReencryptionProgress` can be updated by a job that never imports it.

Exported families (names are used by ``monitoring/dashboards`` and ``monitoring/alerts``):

* ``gl_encryption_operations_total{operation,status,data_class}``: ``status`` is ``success``
  (from :meth:`EncryptionService.stats`, ``operations``) or ``failure`` (its ``failures``;
  split by data class through service events when this object observes the service, else
  ``data_class="unknown"``). Only the data class is a label, never a tenant id, and at most
  :data:`MAX_DATA_CLASSES` distinct values (the rest become ``other``).
* ``gl_encryption_duration_seconds{operation}``: histogram of cached encrypts and decrypts
  measured in Rust. **Sampled**: one call in 16 is timed (reading the clock costs about as
  much as a 64-byte seal), so ``_count`` counts timed calls only; use
  ``gl_encryption_operations_total`` for rates. Quantiles are unaffected by the sampling.
* ``gl_encryption_key_cache_hits_total{key_type}``, ``gl_encryption_key_cache_misses_total``
  ``{key_type}`` and ``gl_encryption_key_cache_size{key_type}`` (``encrypt`` | ``decrypt``).
* ``gl_encryption_failures_total{error_type}``, ``gl_encryption_decrypt_failures_total{reason}``.
* ``gl_kms_calls_total{operation,status}`` and ``gl_kms_latency_seconds{operation}``: from the
  AWS KMS provider's ``observer=`` callback (:attr:`EncryptionMetrics.kms_observer`); with the
  local provider, from the service's ``key_generated`` / ``key_accessed`` events.
* ``gl_encryption_dek_age_seconds``, ``gl_encryption_nonce_budget_used_ratio``: the oldest
  cached DEK and the largest fraction of a DEK's message budget used.
* ``gl_encryption_reencryption_rows_total{status}``, ``gl_encryption_reencryption_remaining_rows``.
* ``gl_encryption_audit_sink_up``: 1 when the audit sink took the last write, else 0 (the
  audit log pushes each change to the collector; see :meth:`AuditLog.add_sink_listener`).
* ``gl_encryption_branch_key_unwraps_total``, ``gl_encryption_branch_key_created_total``:
  branch keys unwrapped (one KMS Decrypt each, at most once per TTL) and created;
  ``gl_encryption_branch_key_derivations_total``: DEKs derived from branch keys, counted in
  Rust (process-wide); ``gl_encryption_branch_keys_cached``: unwrapped branch keys held.
* ``gl_encryption_key_cache_redis_total{outcome}``: the shared Redis cache of wrapped keys
  (``hit``, ``miss``, ``stale``, ``unconfirmed``, ``forged``, ``error``, ``skipped``,
  ``write``). ``forged`` counts entries refused because they do not authenticate: someone
  writes to Redis who should not.
* ``gl_encryption_key_age_seconds``: age of the primary key version (from the service's
  in-memory keyring view; absent for a service that does not expose it).
* From the last rotation autopilot step of this process (pushed into :class:`AutopilotState`
  by :func:`~greenlang_crypto.sqlalchemy.autopilot.run_autopilot_once`; absent until a step
  ran; the families are exported without samples until then):
  ``gl_encryption_column_rows{table,column,key_version}`` (rows of each registered
  column per key version; ``key_version="none"`` counts non-NULL values in no envelope),
  ``gl_encryption_autopilot_next_action_seconds{action}`` (seconds until the next due
  ``rotate``, ``retire``, ``index_rotate``, ``branch_rotate`` or ``reencrypt`` deadline,
  computed at scrape; negative once it has passed),
  ``gl_encryption_autopilot_behind_schedule`` (deadlines of the policy that passed:
  re-encryption behind schedule), ``gl_encryption_autopilot_last_run_status{status}`` (1 for
  the status of the last step, 0 for the others) and
  ``gl_encryption_autopilot_last_run_timestamp_seconds``. A step that finds the lock held
  clears the figures (the holder exports the fleet's); a step that failed keeps them.

Counters stay monotonic across cache replacement (a rotation starts new Rust caches): a drop
in a raw reading is treated as a reset and the previous value is carried forward.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenlang_crypto import _forks
from greenlang_crypto.events import DecryptionFailed, OperationFailed, ServiceEvent, make_event

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from greenlang_crypto.observing import ObservedService, SinkStateSource
    from greenlang_crypto.stats import ServiceStats

__all__ = [
    "AUTOPILOT_STATUSES",
    "KMS_BUCKETS",
    "MAX_DATA_CLASSES",
    "AutopilotSnapshot",
    "AutopilotState",
    "EncryptionMetrics",
    "ReencryptionProgress",
    "autopilot_state",
    "exposition",
    "reencryption_progress",
    "register_metrics",
]

#: Distinct ``data_class`` label values kept before new ones are folded into ``other``.
MAX_DATA_CLASSES = 64
#: Buckets (seconds) of ``gl_kms_latency_seconds``: KMS targets are 30-50 ms, alerts at 200 ms.
KMS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)

_LOCAL_KMS_EVENTS = {
    "key_generated": "GenerateDataKey",
    "key_accessed": "Decrypt",
    "branch_key_created": "GenerateDataKey",
    "branch_key_unwrapped": "Decrypt",
}


class ReencryptionProgress:
    """Process-global progress of the re-encryption job (no Prometheus import needed).

    The job calls :meth:`add` after each batch and :meth:`set_remaining` when it (re)counts.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _forks.fresh_locks_after_fork(self, "_lock")
        self._rows: Counter[str] = Counter()
        self._remaining: int | None = None

    def add(self, status: str, n: int = 1) -> None:
        """Counts ``n`` rows with ``status`` (``success``, ``skipped``, ``failure``...)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._rows[status] += n

    def set_remaining(self, n: int) -> None:
        """Sets the rows still to re-encrypt."""
        with self._lock:
            self._remaining = max(0, int(n))

    def snapshot(self) -> tuple[dict[str, int], int | None]:
        """``(rows by status, remaining)``."""
        with self._lock:
            return dict(self._rows), self._remaining

    def reset(self) -> None:
        """Forgets everything (tests)."""
        with self._lock:
            self._rows.clear()
            self._remaining = None


_PROGRESS = ReencryptionProgress()


def reencryption_progress() -> ReencryptionProgress:
    """The process-global :class:`ReencryptionProgress`."""
    return _PROGRESS


#: Statuses of an autopilot step: the report's four, and ``failed`` (it raised: the database,
#: key store or audit sink was unavailable).
AUTOPILOT_STATUSES = ("done", "progressing", "blocked", "held", "failed")


@dataclass(frozen=True, slots=True)
class AutopilotSnapshot:
    """What the last autopilot step of this process pushed.

    Attributes:
        status: One of :data:`AUTOPILOT_STATUSES`.
        finished_at: When the step ended (UNIX seconds).
        rows: Rows per ``(table, column, key version)``; the version is a number as text, or
            ``none`` for non-NULL values in no envelope.
        next_actions: When each action is next due (UNIX seconds), by action name.
        behind: How many deadlines of the policy have passed.
    """

    status: str
    finished_at: float
    rows: Mapping[tuple[str, str, str], int]
    next_actions: Mapping[str, float]
    behind: int


class AutopilotState:
    """The figures of the last autopilot step, pushed by the step and read at scrape time.

    The step calls :meth:`push` when it ends; the collector reads :meth:`snapshot`. Nothing
    here calls back into the service or the database. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _forks.fresh_locks_after_fork(self, "_lock")
        self._last: AutopilotSnapshot | None = None

    def push(
        self,
        status: str,
        *,
        finished_at: float,
        rows: Mapping[tuple[str, str, str], int] | None = None,
        next_actions: Mapping[str, float | None] | None = None,
        behind: int | None = None,
    ) -> None:
        """Stores the result of a step.

        ``None`` for ``rows``, ``next_actions`` or ``behind`` keeps the previous figures (a
        step that did not get the lock, or failed, learned nothing new about them).

        Raises:
            ValueError: ``status`` is not one of :data:`AUTOPILOT_STATUSES`, or a row count or
                ``behind`` is negative.
        """
        if status not in AUTOPILOT_STATUSES:
            raise ValueError(f"unknown autopilot status {status!r}")
        if behind is not None and behind < 0:
            raise ValueError("behind must be >= 0")
        if rows is not None and any(n < 0 for n in rows.values()):
            raise ValueError("row counts must be >= 0")
        with self._lock:
            last = self._last
            self._last = AutopilotSnapshot(
                status=status,
                finished_at=float(finished_at),
                rows=dict(rows) if rows is not None else dict(last.rows if last else {}),
                next_actions=(
                    {k: float(v) for k, v in next_actions.items() if v is not None}
                    if next_actions is not None
                    else dict(last.next_actions if last else {})
                ),
                behind=behind if behind is not None else (last.behind if last else 0),
            )

    def snapshot(self) -> AutopilotSnapshot | None:
        """The last recorded step, or ``None`` when no step ran in this process."""
        with self._lock:
            return self._last

    def reset(self) -> None:
        """Forgets everything (tests)."""
        with self._lock:
            self._last = None


_AUTOPILOT = AutopilotState()


def autopilot_state() -> AutopilotState:
    """The process-global :class:`AutopilotState` the autopilot step pushes into."""
    return _AUTOPILOT


class _Histogram:
    """A cumulative-at-read histogram in plain Python (no prometheus import on the hot path)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[int]:
        out, acc = [], 0
        for c in self.counts:
            acc += c
            out.append(acc)
        return out


class _Monotonic:
    """Keeps counters monotonic when their source restarts from zero."""

    def __init__(self) -> None:
        self._last: dict[Any, float] = {}
        self._base: dict[Any, float] = {}

    def __call__(self, key: Any, raw: float) -> float:
        last = self._last.get(key, 0.0)
        if raw < last:
            self._base[key] = self._base.get(key, 0.0) + last
        self._last[key] = raw
        return self._base.get(key, 0.0) + raw


class EncryptionMetrics:
    """The collector: register it with a Prometheus registry and pass it as a service observer.

    Wiring::

        metrics = EncryptionMetrics()
        service = EncryptionService(config, observers=[metrics])
        metrics.bind(service)
        prometheus_client.REGISTRY.register(metrics)     # or register_metrics(service, ...)

    With AWS KMS, build the provider with ``observer=metrics.kms_observer`` and pass it to the
    service, so KMS calls are timed where they happen.

    Args:
        service: The service to read (can be bound later with :meth:`bind`).
        audit: The audit log whose sink state is exported (it pushes each change here).
        progress: Re-encryption progress (default: the process-global one).
        autopilot: The autopilot's last step (default: the process-global one).
        clock: Wall clock (UNIX seconds) that ages and countdowns are measured with.
    """

    def __init__(
        self,
        service: ObservedService | None = None,
        *,
        audit: SinkStateSource | None = None,
        progress: ReencryptionProgress | None = None,
        autopilot: AutopilotState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._autopilot = autopilot or _AUTOPILOT
        self._clock = clock
        self._audit: SinkStateSource | None = None
        # The audit sink's state as last pushed by the audit log; None: no audit log, no gauge.
        self._sink_up: bool | None = None
        self._progress = progress or _PROGRESS
        self._lock = threading.Lock()
        # A scrape thread of the parent may hold it at the fork.
        _forks.fresh_locks_after_fork(self, "_lock")
        self._kms_calls: Counter[tuple[str, str]] = Counter()
        self._kms_latency: dict[str, _Histogram] = {}
        self._kms_direct = False
        self._failed_by_class: Counter[tuple[str, str]] = Counter()
        self._classes: set[str] = set()
        self._mono = _Monotonic()
        if audit is not None:
            self._follow(audit)

    def bind(self, service: ObservedService, *, audit: SinkStateSource | None = None) -> None:
        """Sets the service to read at scrape time (and the audit log whose state to export)."""
        self._service = service
        if audit is not None:
            self._follow(audit)

    def _follow(self, audit: SinkStateSource) -> None:
        if audit is self._audit:
            return
        self._audit = audit

        def on_sink_state(up: bool) -> None:
            # A log replaced by a later bind keeps calling; only the current one counts.
            if self._audit is audit:
                self._sink_up = up

        audit.add_sink_listener(on_sink_state)

    # -- inputs (cheap, called outside the encryption fast path) ----------------------------

    @property
    def kms_observer(self) -> Callable[[str, str, float], None]:
        """The callback for ``AwsKmsKeyProvider(observer=...)``.

        Once taken, provider calls are counted only from it (not from service events), so
        nothing is counted twice.
        """
        self._kms_direct = True
        return self.observe_kms_call

    def observe_kms_call(self, operation: str, status: str, seconds: float | None) -> None:
        """Counts one provider call; ``status`` ``ok`` is exported as ``success``."""
        label = "success" if status in ("ok", "success") else status
        with self._lock:
            self._kms_calls[(operation, label)] += 1
            if seconds is not None:
                hist = self._kms_latency.get(operation)
                if hist is None:
                    hist = self._kms_latency[operation] = _Histogram(KMS_BUCKETS)
                hist.observe(seconds)

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        """:meth:`on_service_event` for an event given by name and fields."""
        self.on_service_event(make_event(event, fields))

    def on_service_event(self, event: ServiceEvent) -> None:
        """Typed service observer: failures by data class, and local-provider calls."""
        name = event.event_name
        if isinstance(event, OperationFailed):
            op = "decrypt" if isinstance(event, DecryptionFailed) else "encrypt"
            with self._lock:
                self._failed_by_class[(op, self._class_label(event.data_class))] += 1
        elif name in _LOCAL_KMS_EVENTS and not self._kms_direct:
            seconds = event.fields().get("seconds")
            self.observe_kms_call(
                _LOCAL_KMS_EVENTS[name],
                "success",
                float(seconds) if isinstance(seconds, int | float) else None,
            )

    def _class_label(self, data_class: object) -> str:
        if not isinstance(data_class, str) or not data_class:
            return "unknown"
        if data_class in self._classes:
            return data_class
        if len(self._classes) >= MAX_DATA_CLASSES:
            return "other"
        self._classes.add(data_class)
        return data_class

    # -- collector ------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        """Nothing up front: registration must not read the service."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Builds every family from the service's counters (called by Prometheus at scrape)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        out: list[Metric] = []
        svc = self._service
        with self._lock:
            if svc is not None:
                # One typed snapshot per scrape (reading it calls no provider or store).
                stats = svc.stats()
                out.extend(self._service_families(stats, CounterMetricFamily, GaugeMetricFamily))
                out.append(self._duration_family(stats, HistogramMetricFamily))
                out.extend(_branch_families(svc, CounterMetricFamily, GaugeMetricFamily))
                out.extend(self._key_age_family(svc, GaugeMetricFamily))
            out.extend(self._kms_families(CounterMetricFamily, HistogramMetricFamily))
        rows, remaining = self._progress.snapshot()
        reenc = CounterMetricFamily(
            "gl_encryption_reencryption_rows",
            "Rows processed by the re-encryption job, by status.",
            labels=["status"],
        )
        for status, n in sorted(rows.items()):
            reenc.add_metric([status], n)
        out.append(reenc)
        out.append(
            GaugeMetricFamily(
                "gl_encryption_reencryption_remaining_rows",
                "Rows the re-encryption job still has to move to the primary key version.",
                value=remaining or 0,
            )
        )
        sink_up = self._sink_up
        if sink_up is not None:
            out.append(
                GaugeMetricFamily(
                    "gl_encryption_audit_sink_up",
                    "1 if the audit sink accepted the last write, else 0.",
                    value=1 if sink_up else 0,
                )
            )
        out.extend(self._autopilot_families(GaugeMetricFamily))
        return out

    def _key_age_family(self, svc: ObservedService, gauge: Any) -> list[Metric]:
        from greenlang_crypto.observing import PrimaryKeySource

        if not isinstance(svc, PrimaryKeySource):
            return []
        age = max(0.0, self._clock() - svc.primary_key_created_at)
        return [
            gauge(
                "gl_encryption_key_age_seconds",
                "Age of the primary key version (seconds since it was created).",
                value=age,
            )
        ]

    def _autopilot_families(self, gauge: Any) -> list[Metric]:
        """The autopilot's families; without samples until a step ran in this process.

        Empty rather than zero: a zero would read as "nothing behind, nothing due".
        """
        last = self._autopilot.snapshot()
        rows = gauge(
            "gl_encryption_column_rows",
            "Rows of each registered column per key version, at the last autopilot step.",
            labels=["table", "column", "key_version"],
        )
        nxt = gauge(
            "gl_encryption_autopilot_next_action_seconds",
            "Seconds until the next due autopilot action (negative: overdue).",
            labels=["action"],
        )
        status = gauge(
            "gl_encryption_autopilot_last_run_status",
            "1 for the status of the last autopilot step, 0 for the others.",
            labels=["status"],
        )
        behind = gauge(
            "gl_encryption_autopilot_behind_schedule",
            "Deadlines of the rotation policy that have passed at the last autopilot step.",
            labels=[],
        )
        finished = gauge(
            "gl_encryption_autopilot_last_run_timestamp_seconds",
            "When the last autopilot step ended (UNIX seconds).",
            labels=[],
        )
        if last is not None:
            for (table, column, version), n in sorted(last.rows.items()):
                rows.add_metric([table, column, version], n)
            now = self._clock()
            for action, at in sorted(last.next_actions.items()):
                nxt.add_metric([action], at - now)
            for name in AUTOPILOT_STATUSES:
                status.add_metric([name], 1 if name == last.status else 0)
            behind.add_metric([], last.behind)
            finished.add_metric([], last.finished_at)
        return [rows, nxt, behind, status, finished]

    def _service_families(self, stats: ServiceStats, counter: Any, gauge: Any) -> list[Metric]:
        ops = counter(
            "gl_encryption_operations",
            "Encrypt and decrypt operations by operation, status and data class.",
            labels=["operation", "status", "data_class"],
        )
        success: Counter[tuple[str, str]] = Counter()
        for op, by_class in stats.operations.items():
            for dc, count in by_class.items():
                success[(op, self._class_label(dc))] += count.count
        for (op, dc), n in sorted(success.items()):
            ops.add_metric([op, "success", dc], self._mono(("ok", op, dc), n))
        failures = stats.failures
        fail_total: Counter[str] = Counter()
        by_error: Counter[str] = Counter()
        by_reason: Counter[str] = Counter()
        for (op, error_type), n in failures.items():
            fail_total[op] += n
            by_error[error_type] += n
            if op == "decrypt":
                by_reason[_reason(error_type)] += n
        for op in sorted(fail_total):
            split = {dc: n for (o, dc), n in self._failed_by_class.items() if o == op}
            rest = fail_total[op] - sum(split.values())
            if rest > 0:
                split["unknown"] = split.get("unknown", 0) + rest
            for dc, n in sorted(split.items()):
                ops.add_metric([op, "failure", dc], n)
        failures_f = counter(
            "gl_encryption_failures", "Failed operations by error type.", labels=["error_type"]
        )
        for error_type, n in sorted(by_error.items()):
            failures_f.add_metric([error_type], n)
        dec_f = counter(
            "gl_encryption_decrypt_failures",
            "Failed decryptions by reason (authentication, malformed, key_retired...).",
            labels=["reason"],
        )
        for reason, n in sorted(by_reason.items()):
            dec_f.add_metric([reason], n)

        hits = counter("gl_encryption_key_cache_hits", "DEK cache hits.", labels=["key_type"])
        misses = counter("gl_encryption_key_cache_misses", "DEK cache misses.", labels=["key_type"])
        size = gauge("gl_encryption_key_cache_size", "DEKs in the cache.", labels=["key_type"])
        for key_type, c in (("encrypt", stats.encrypt_cache), ("decrypt", stats.decrypt_cache)):
            hits.add_metric([key_type], self._mono(("hit", key_type), c.hits))
            misses.add_metric([key_type], self._mono(("miss", key_type), c.misses))
            size.add_metric([key_type], c.size)

        age = gauge(
            "gl_encryption_dek_age_seconds",
            "Age of the oldest cached encryption DEK.",
            value=stats.oldest_dek_age_seconds,
        )
        budget = gauge(
            "gl_encryption_nonce_budget_used_ratio",
            "Largest fraction of a cached DEK's message (nonce) budget used.",
            value=stats.max_budget_used,
        )
        return [ops, failures_f, dec_f, hits, misses, size, age, budget]

    def _duration_family(self, stats: ServiceStats, histogram: Any) -> Metric:
        fam = histogram(
            "gl_encryption_duration_seconds",
            "Latency of cached encrypts and decrypts, sampled 1 call in 16 (see module docs).",
            labels=["operation"],
        )
        for op, hist in sorted(stats.latency.items()):
            counts = [self._mono(("lat", op, i), c) for i, c in enumerate(hist.cumulative)]
            buckets = [(_le(b), c) for b, c in zip(hist.bounds, counts, strict=False)]
            buckets.append(("+Inf", counts[-1]))
            fam.add_metric([op], buckets, self._mono(("lat_sum", op), hist.sum_seconds))
        result: Metric = fam
        return result

    def _kms_families(self, counter: Any, histogram: Any) -> list[Metric]:
        calls = counter(
            "gl_kms_calls",
            "Key provider (KMS) calls by operation and status.",
            labels=["operation", "status"],
        )
        for (op, status), n in sorted(self._kms_calls.items()):
            calls.add_metric([op, status], n)
        lat = histogram(
            "gl_kms_latency_seconds", "Key provider (KMS) call latency.", labels=["operation"]
        )
        for op, hist in sorted(self._kms_latency.items()):
            cum = hist.cumulative()
            buckets = [(_le(b), c) for b, c in zip(hist.bounds, cum, strict=False)]
            buckets.append(("+Inf", cum[-1]))
            lat.add_metric([op], buckets, hist.total)
        return [calls, lat]


def _branch_families(svc: ObservedService, counter: Any, gauge: Any) -> list[Metric]:
    """Branch keys and the shared Redis key cache (counters kept by the service and Rust)."""
    stats = svc.branch_key_stats()
    out = [
        counter(
            "gl_encryption_branch_key_unwraps",
            "Branch keys unwrapped through the key provider (one KMS Decrypt each).",
            value=stats.get("unwraps", 0),
        ),
        counter(
            "gl_encryption_branch_key_created",
            "Branch keys created (one KMS GenerateDataKey each).",
            value=stats.get("created", 0),
        ),
        counter(
            "gl_encryption_branch_key_derivations",
            "DEKs derived from branch keys in this process (counted in Rust).",
            value=stats.get("derivations", 0),
        ),
        gauge(
            "gl_encryption_branch_keys_cached",
            "Unwrapped branch keys held in memory.",
            value=stats.get("cached_keys", 0),
        ),
    ]
    redis = counter(
        "gl_encryption_key_cache_redis",
        "Lookups and writes of the shared Redis cache of wrapped keys, by outcome.",
        labels=["outcome"],
    )
    for outcome, n in sorted(svc.key_cache_stats().items()):
        redis.add_metric([outcome], n)
    out.append(redis)
    return out


def _reason(error_type: str) -> str:
    """The ``reason`` the exception class named ``error_type`` declares (else ``other``)."""
    from greenlang_crypto import exceptions

    cls = getattr(exceptions, error_type, None)
    if isinstance(cls, type) and issubclass(cls, exceptions.GreenlangCryptoError):
        return cls.reason
    return "other"


def _le(bound: float) -> str:
    return repr(float(bound))


def register_metrics(
    service: ObservedService,
    *,
    registry: CollectorRegistry | None = None,
    audit: SinkStateSource | None = None,
    metrics: EncryptionMetrics | None = None,
) -> EncryptionMetrics:
    """Registers a collector for ``service`` (default registry: ``prometheus_client.REGISTRY``).

    Pass ``metrics`` when it was already given to the service as an observer.
    """
    from prometheus_client import REGISTRY

    collector = metrics or EncryptionMetrics()
    collector.bind(service, audit=audit)
    (registry or REGISTRY).register(collector)
    return collector


def exposition(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """``(body, content type)`` of the text exposition format, for a ``/metrics`` handler."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(registry or REGISTRY), CONTENT_TYPE_LATEST
