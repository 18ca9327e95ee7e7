"""The buffered audit log: service observer and admin-action recorder."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from greenlang_crypto.audit.chain import (
    _CHAIN_LABEL,
    _ROOT_LIMITS,
    _ROOT_META,
    AUDIT_CONTEXT,
    ChainKey,
    _unwrap_root,
)
from greenlang_crypto.audit.records import AuditEntry, AuditRecord, Scalar, _now_iso, _scalar
from greenlang_crypto.audit.sinks.base import AuditQuery, AuditSink
from greenlang_crypto.audit.verifier import VerifyProblem, VerifyResult, _verify
from greenlang_crypto.exceptions import AuditSinkUnavailableError

if TYPE_CHECKING:
    from greenlang_crypto.service import EncryptionService

_log = logging.getLogger("greenlang_crypto.audit")


#: Event fields copied into ``details``: scalar, non-secret by the events contract. Anything
#: else an event carries (fingerprints, timings, future fields) is left out on purpose.
_DETAIL_FIELDS = frozenset(
    {
        "error_type",
        "key_reference",
        "dek_id",
        "operation",
        "old_version",
        "new_version",
        "min_version",
        "deleted_stored_deks",
        "count",
        "kms_on_demand",
        "size",
    }
)
_DATA_EVENTS = frozenset(
    {"encryption_performed", "decryption_performed", "key_cache_hit", "key_cache_miss"}
)


class AuditLog:
    """The audit log: a :class:`~greenlang_crypto.events.ServiceObserver` and admin recorder.

    Typical wiring (the observer must exist before the service, and the service before the
    chain key, which the service's provider wraps)::

        audit = AuditLog(SqliteAuditSink(data_dir / "audit.db"))
        service = EncryptionService(config, observers=[audit])
        audit.attach(service)        # loads or creates the chain key, starts the flusher

    Args:
        sink: Where records go.
        flush_interval: Seconds between background flushes (aggregates and buffered events).
        max_buffer: Events kept in memory while the sink is down; beyond that the oldest are
            dropped and counted (:attr:`dropped`).
        actor: Actor recorded for data-path events that carry none.
        start_thread: Start the background flusher in :meth:`attach`.
    """

    def __init__(
        self,
        sink: AuditSink,
        *,
        flush_interval: float = 10.0,
        max_buffer: int = 10_000,
        actor: str = "service",
        start_thread: bool = True,
    ) -> None:
        self.sink = sink
        self.flush_interval = flush_interval
        self.actor = actor
        self._start_thread = start_thread
        self._buffer: deque[AuditEntry] = deque()
        self._max_buffer = max_buffer
        self._buffer_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._chain: ChainKey | None = None
        self._service: EncryptionService | None = None
        self._per_op = False
        self._last_ops: dict[tuple[str, str], int] = {}
        self._attributed: Counter[tuple[str, str, str]] = Counter()
        self._carry: Counter[tuple[str, str]] = Counter()
        self._window_start = _now_iso()
        self._sink_up = True
        self._dropped = 0
        self._dropped_reported = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- wiring ------------------------------------------------------------------------

    def bind(self, service: EncryptionService) -> None:
        """Binds the service (counters, provider) without writing or starting anything."""
        self._service = service
        self._per_op = bool(getattr(service, "per_operation_events", False))
        self._last_ops = self._read_ops()

    def attach(self, service: EncryptionService) -> None:
        """Binds the service, loads or creates the chain key, and starts the flusher.

        If the sink is down the chain key is retried at each flush, and events stay buffered
        meanwhile.
        """
        self.bind(service)
        try:
            self._ensure_chain()
        except AuditSinkUnavailableError:
            self._sink_up = False
            _log.warning("audit sink %s is down at start; buffering", self.sink.description)
        if self._start_thread and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="glc-audit-flusher", daemon=True)
            self._thread.start()

    def _ensure_chain(self, *, create: bool = True) -> ChainKey | None:
        if self._chain is not None:
            return self._chain
        if self._service is None:
            raise AuditSinkUnavailableError("audit log is not attached to a service")
        provider = self._service.provider
        stored = self.sink.get_meta(_ROOT_META)
        if stored is None:
            if not create:
                return None
            versions = self._service.versions()
            primary = [v for v in versions if v.state == "primary"] or versions[-1:]
            key_id = primary[0].wrapping_key_id
            generated = provider.generate_data_key(key_id, AUDIT_CONTEXT, _ROOT_LIMITS)
            candidate = json.dumps(
                {
                    "provider": provider.name,
                    "key_id": generated.key_id,
                    "wrapped": base64.b64encode(generated.wrapped).decode(),
                }
            )
            stored = self.sink.put_meta_if_absent(_ROOT_META, candidate)
        self._chain = ChainKey(_unwrap_root(provider, stored).derive_index_key(_CHAIN_LABEL))
        return self._chain

    def _chain_key(self) -> ChainKey:
        chain = self._ensure_chain()
        assert chain is not None  # create=True always yields a key or raises
        return chain

    # -- ServiceObserver ---------------------------------------------------------------

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        """Turns a service event into a buffered record (never blocks, never raises)."""
        if event == "key_cache_hit" and not self._per_op:
            return
        details = {k: _scalar(v) for k, v in fields.items() if k in _DETAIL_FIELDS}
        outcome = "failure" if event.endswith("_failed") else "success"
        key_version = fields.get("key_version", fields.get("new_version"))
        entry = AuditEntry(
            action=event,
            actor=self.actor,
            outcome=outcome,
            key_id=_opt_str(fields.get("key_id")),
            key_version=key_version if isinstance(key_version, int) else None,
            context_digest=_opt_str(fields.get("context_digest")),
            data_class=_opt_str(fields.get("data_class")),
            details=details,
        )
        self._enqueue(entry)
        if event not in _DATA_EVENTS:
            # Key events and failures are written soon, not at the next interval.
            self._wake.set()

    def _enqueue(self, entry: AuditEntry) -> None:
        with self._buffer_lock:
            if len(self._buffer) >= self._max_buffer:
                self._buffer.popleft()
                self._dropped += 1
            self._buffer.append(entry)

    # -- admin actions -----------------------------------------------------------------

    def record(
        self,
        action: str,
        *,
        actor: str,
        outcome: str = "success",
        key_id: str | None = None,
        key_version: int | None = None,
        context_digest: str | None = None,
        data_class: str | None = None,
        request_id: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Scalar] | None = None,
        required: bool = True,
    ) -> AuditRecord | None:
        """Writes one record now (admin actions, API decrypts, denials).

        Args:
            action: The action name (for example ``key_rotate``).
            actor: Who acts.
            outcome: ``intent`` before acting, then ``success`` or ``failure``; ``denied``.
            key_id: Wrapping key id.
            key_version: Key version.
            context_digest: Hex context digest (never the context itself).
            data_class: Data class.
            request_id: Request id.
            reason: The stated reason.
            details: Further non-secret scalars.
            required: When true (security-relevant actions) a sink failure raises; when false
                the record is buffered instead.

        Returns:
            The sealed record, or None when it was buffered.

        Raises:
            AuditSinkUnavailableError: ``required`` and the sink did not take the record; the
                caller must not perform the action.
        """
        entry = AuditEntry(
            action=action,
            actor=actor,
            outcome=outcome,
            key_id=key_id,
            key_version=key_version,
            context_digest=context_digest,
            data_class=data_class,
            request_id=request_id,
            reason=reason,
            details=dict(details or {}),
        )
        if not required:
            self._enqueue(entry)
            self._wake.set()
            return None
        records = self._write([entry])
        return records[-1]

    def note_operation(self, operation: str, data_class: str, actor: str) -> None:
        """Attributes one successful encrypt or decrypt to ``actor`` in the next aggregate.

        Costs one counter increment; the API calls it so aggregates carry the caller.
        """
        if not self._per_op:
            with self._buffer_lock:
                self._attributed[(operation, data_class, actor)] += 1

    def require_available(self) -> None:
        """Raises unless the sink takes writes right now.

        Raises:
            AuditSinkUnavailableError: The sink is down.
        """
        try:
            self._ensure_chain()
            self.sink.ping()
        except AuditSinkUnavailableError:
            self._sink_up = False
            raise
        self._sink_up = True

    # -- flushing ----------------------------------------------------------------------

    def _write(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        with self._write_lock:
            try:
                chain = self._chain_key()
                records = self.sink.append(entries, chain)
            except AuditSinkUnavailableError:
                self._sink_up = False
                raise
            except Exception as exc:
                # A provider failure while loading the chain key also makes the log unusable.
                self._sink_up = False
                raise AuditSinkUnavailableError(
                    f"audit log unavailable ({type(exc).__name__})"
                ) from None
            self._sink_up = True
            return records

    def _read_ops(self) -> dict[tuple[str, str], int]:
        if self._service is None:
            return {}
        counts = self._service.operation_counts()
        return {(op, dc): n for op, by_dc in counts.items() for dc, (n, _b) in by_dc.items()}

    def _aggregates(self) -> list[AuditEntry]:
        if self._service is None or self._per_op:
            return []
        # Snapshot the API attributions before the service counters: an operation the API
        # noted has always been counted by the service already.
        with self._buffer_lock:
            attributed, self._attributed = self._attributed, Counter()
        now_ops = self._read_ops()
        start, end = self._window_start, _now_iso()
        self._window_start = end
        out: list[AuditEntry] = []
        for (op, dc), total in sorted(now_ops.items()):
            delta = total - self._last_ops.get((op, dc), 0)
            if delta < 0:  # a counter reset (a new cache after rotation)
                delta = total
            by_actor = {a: n for (o, d, a), n in attributed.items() if o == op and d == dc}
            rest = delta - sum(by_actor.values()) - self._carry[(op, dc)]
            self._carry[(op, dc)] = max(0, -rest)
            if rest > 0:
                by_actor[self.actor] = by_actor.get(self.actor, 0) + rest
            for actor, n in sorted(by_actor.items()):
                if n <= 0:
                    continue
                out.append(
                    AuditEntry(
                        action="encryption_performed"
                        if op == "encrypt"
                        else "decryption_performed",
                        actor=actor,
                        outcome="success",
                        time=end,
                        data_class=dc,
                        details={"aggregated": True, "count": n, "since": start},
                    )
                )
        self._last_ops = now_ops
        return out

    def flush(self) -> int:
        """Writes aggregates and buffered events now; returns the records written.

        A sink failure leaves the events buffered (bounded) and marks the sink down; it does
        not raise.
        """
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> int:
        entries = self._aggregates()
        with self._buffer_lock:
            entries = list(self._buffer) + entries
            self._buffer.clear()
            dropped = self._dropped - self._dropped_reported
        if dropped:
            entries.append(
                AuditEntry(
                    action="audit_events_dropped",
                    actor="audit",
                    outcome="failure",
                    details={"count": dropped},
                )
            )
        if not entries:
            return 0
        try:
            written = self._write(entries)
        except AuditSinkUnavailableError:
            with self._buffer_lock:
                keep = [e for e in entries if e.action != "audit_events_dropped"]
                # Put them back in front of anything enqueued meanwhile, within the bound.
                merged = keep + list(self._buffer)
                overflow = max(0, len(merged) - self._max_buffer)
                self._dropped += overflow
                self._buffer = deque(merged[overflow:])
            _log.warning(
                "audit sink %s unavailable; %d event(s) buffered",
                self.sink.description,
                len(self._buffer),
            )
            return 0
        self._dropped_reported += dropped
        return len(written)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # the flusher must survive anything
                _log.warning("audit flush failed: %s", type(exc).__name__)

    def close(self) -> None:
        """Stops the flusher, flushes what is buffered and closes the sink."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.flush_interval))
            self._thread = None
        self.flush()
        self.sink.close()

    # -- reading -----------------------------------------------------------------------

    @property
    def sink_up(self) -> bool:
        """Whether the last write (or check) reached the sink."""
        return self._sink_up

    @property
    def buffered(self) -> int:
        """Events waiting in memory."""
        return len(self._buffer)

    @property
    def dropped(self) -> int:
        """Events dropped because the buffer was full while the sink was down."""
        return self._dropped

    def query(self, q: AuditQuery) -> list[AuditRecord]:
        """Records matching ``q`` (see :class:`AuditQuery`)."""
        return self.sink.query(q)

    def tail(self, n: int = 20) -> list[AuditRecord]:
        """The last ``n`` records."""
        return self.sink.tail(n)

    def verify(self) -> VerifyResult:
        """Checks the whole chain; names each edited, deleted, inserted or reordered record.

        Raises:
            AuditSinkUnavailableError: The sink or the chain key cannot be read.
        """
        chain = self._ensure_chain(create=False)
        if chain is None:
            count = sum(1 for _ in self.sink.records())
            if not count:
                return VerifyResult(0, [])
            missing = VerifyProblem(1, "unverifiable", "the audit root key is missing")
            return VerifyResult(count, [missing])
        return _verify(self.sink.records(), chain, self.sink.head())


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)
