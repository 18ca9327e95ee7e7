"""The buffered audit log: service observer and admin-action recorder."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from greenlang_crypto import _forks
from greenlang_crypto.audit._aggregates import OperationAggregator
from greenlang_crypto.audit._chain_key import load_chain_key
from greenlang_crypto.audit._dead_letter import append_dead_letter, pending_path, take_pending
from greenlang_crypto.audit._recorder import AdminRecorder, acting_as, current_actor
from greenlang_crypto.audit.anchors import AuditAnchor, default_anchor
from greenlang_crypto.audit.chain import ChainKey
from greenlang_crypto.audit.records import (
    AuditEntry,
    AuditRecord,
    Checkpoint,
    _now_iso,
    _scalar,
)
from greenlang_crypto.audit.sinks.base import AuditQuery, AuditRecordRejectedError, AuditSink
from greenlang_crypto.audit.verifier import VerifyProblem, VerifyResult, _verify
from greenlang_crypto.events import (
    KeyCacheHit,
    OperationFailed,
    ServiceEvent,
    make_event,
)
from greenlang_crypto.exceptions import AuditSinkUnavailableError
from greenlang_crypto.observing import ObservedService, SinkListener, SystemKeyHandle

__all__ = ["AuditLog", "acting_as", "current_actor"]

_log = logging.getLogger("greenlang_crypto.audit")


#: Event fields copied into ``details``: scalar, non-secret by the events contract. Anything
#: else an event carries (fingerprints, timings, future fields) is left out on purpose.
_DETAIL_FIELDS = frozenset(
    {
        "error_type",
        "reason",
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
        "branch_id",
        "purpose",
        "phase",
        "tenant_digest",
        "stored_deks",
        "branch_keys",
        "instances",
        "completed",
    }
)
_DATA_EVENTS = frozenset(
    {"encryption_performed", "decryption_performed", "key_cache_hit", "key_cache_miss"}
)


class AuditLog(AdminRecorder):
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
        anchors: Where checkpoints of the chain head go. Default: ``<log file>.anchor`` beside
            a SQLite or JSON-lines log; PostgreSQL has no default. Pass ``[]`` for none.
        checkpoint_interval: Seconds between checkpoints (also taken at :meth:`close`).
        dead_letter: File for records the sink rejects and for what shutdown cannot flush.
            Default: ``<log file>.deadletter`` beside a file log, else
            ``<data_dir>/audit-deadletter.jsonl`` of the attached service.
    """

    def __init__(
        self,
        sink: AuditSink,
        *,
        flush_interval: float = 10.0,
        max_buffer: int = 10_000,
        actor: str = "service",
        start_thread: bool = True,
        anchors: Sequence[AuditAnchor] | None = None,
        checkpoint_interval: float = 60.0,
        dead_letter: str | os.PathLike[str] | None = None,
    ) -> None:
        self.sink = sink
        if anchors is None:
            default = default_anchor(sink)
            anchors = [default] if default is not None else []
        self.anchors: list[AuditAnchor] = list(anchors)
        self.checkpoint_interval = checkpoint_interval
        sink_path = getattr(sink, "path", None)
        if dead_letter is None and isinstance(sink_path, Path):
            dead_letter = sink_path.with_name(sink_path.name + ".deadletter")
        self.dead_letter: Path | None = None if dead_letter is None else Path(dead_letter)
        self._last_written: tuple[int, str] | None = None
        self._last_anchored: int | None = None
        self._last_checkpoint_at = time.monotonic()
        self._anchor_up = True
        self._rejected = 0
        self.flush_interval = flush_interval
        self.actor = actor
        self._start_thread = start_thread
        self._buffer: deque[AuditEntry] = deque()
        self._max_buffer = max_buffer
        self._buffer_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._chain: ChainKey | None = None
        self._system_keys: SystemKeyHandle | None = None
        self._aggregates = OperationAggregator()
        self._sink_up = True
        self._sink_lock = threading.Lock()
        self._sink_listeners: list[SinkListener] = []
        self._dropped = 0
        self._dropped_reported = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        _forks.register(self, _forks.AUDIT)

    def _after_fork_in_child(self) -> None:
        # The child is another writer of the same log. What the parent buffered is the
        # parent's to write (writing it here too would record those events twice), and the
        # aggregated counts start from the child's own counters. Fresh locks (a parent thread
        # may have held one), and the child's own flusher if the parent ran one.
        self._buffer_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._sink_lock = threading.Lock()
        self._buffer = deque()
        self._aggregates.restart()
        if self._thread is not None and not self._stop.is_set():
            self._stop = threading.Event()
            self._wake = threading.Event()
            self._start_flusher()

    def _start_flusher(self) -> None:
        self._thread = threading.Thread(target=self._run, name="glc-audit-flusher", daemon=True)
        self._thread.start()

    # -- wiring ------------------------------------------------------------------------

    def bind(self, service: ObservedService) -> None:
        """Binds the service without writing or starting anything.

        The log keeps the service's ``stats`` callable (read at each flush for the aggregated
        records) and its :class:`~greenlang_crypto.observing.SystemKeyHandle` for the chain's
        root key; it never reaches into the service's provider or key store.
        """
        self._system_keys = service.system_keys
        self._aggregates.bind(service.stats, per_operation=service.per_operation_events)
        if self.dead_letter is None:
            self.dead_letter = Path(service.config.data_dir) / "audit-deadletter.jsonl"

    def attach(self, service: ObservedService) -> None:
        """Binds the service, loads or creates the chain key, and starts the flusher.

        If the sink is down the chain key is retried at each flush, and events stay buffered
        meanwhile.
        """
        self.bind(service)
        self._load_pending()
        try:
            self._ensure_chain()
        except AuditSinkUnavailableError:
            self._set_sink_up(False)
            _log.warning("audit sink %s is down at start; buffering", self.sink.description)
        if self._start_thread and self._thread is None:
            self._start_flusher()

    def _ensure_chain(self, *, create: bool = True) -> ChainKey | None:
        if self._chain is not None:
            return self._chain
        if self._system_keys is None:
            raise AuditSinkUnavailableError("audit log is not attached to a service")
        self._chain = load_chain_key(self.sink, self._system_keys, create=create)
        return self._chain

    def _chain_key(self) -> ChainKey:
        chain = self._ensure_chain()
        assert chain is not None  # create=True always yields a key or raises
        return chain

    # -- ServiceObserver ---------------------------------------------------------------

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        """:meth:`on_service_event` for an event given by name and fields."""
        self.on_service_event(make_event(event, fields))

    def on_service_event(self, ev: ServiceEvent) -> None:
        """Turns a service event into a buffered record (never blocks, never raises)."""
        event = ev.event_name
        if isinstance(ev, KeyCacheHit) and not self._aggregates.per_operation:
            return
        fields = ev.fields()
        details = {k: _scalar(v) for k, v in fields.items() if k in _DETAIL_FIELDS}
        outcome = "failure" if isinstance(ev, OperationFailed) else "success"
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

    # -- admin actions (record, audited, key_change: AdminRecorder) ----------------------

    def note_operation(self, operation: str, data_class: str, actor: str) -> None:
        """Attributes one successful encrypt or decrypt to ``actor`` in the next aggregate.

        Costs one counter increment; the API calls it so aggregates carry the caller.
        """
        self._aggregates.note(operation, data_class, actor)

    def require_available(self) -> None:
        """Raises unless the sink takes a write right now (the probe writes; see ``ping``).

        Also the health check: a sink that can be read but not written is down, and
        :attr:`sink_up` (the sink-down gauge) stays false.

        Raises:
            AuditSinkUnavailableError: The sink is down.
        """
        try:
            self._ensure_chain()
            self.sink.ping()
        except AuditSinkUnavailableError:
            self._set_sink_up(False)
            raise
        except Exception as exc:
            self._set_sink_up(False)
            raise AuditSinkUnavailableError(
                f"audit log unavailable ({type(exc).__name__})"
            ) from None
        self._set_sink_up(True)

    probe = require_available

    # -- flushing ----------------------------------------------------------------------

    def _write(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        with self._write_lock:
            try:
                chain = self._chain_key()
                records = self.sink.append(entries, chain)
            except AuditRecordRejectedError:
                # The sink is up; these values are refused. Not an outage.
                raise
            except AuditSinkUnavailableError:
                self._set_sink_up(False)
                raise
            except Exception as exc:
                # A provider failure while loading the chain key also makes the log unusable.
                self._set_sink_up(False)
                raise AuditSinkUnavailableError(
                    f"audit log unavailable ({type(exc).__name__})"
                ) from None
            self._set_sink_up(True)
            if records:
                self._last_written = (records[-1].seq, records[-1].hmac)
            return records

    def flush(self) -> int:
        """Writes aggregates and buffered events now; returns the records written.

        A sink failure leaves the events buffered (bounded) and marks the sink down; it does
        not raise.
        """
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> int:
        entries = self._aggregates.take(self.actor)
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
        except AuditRecordRejectedError:
            self._dropped_reported += dropped
            return self._write_one_by_one(entries)
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

    def _write_one_by_one(self, entries: Sequence[AuditEntry]) -> int:
        """Stores each entry alone; a refused one goes to the dead-letter, the rest go on."""
        written = 0
        for entry in entries:
            try:
                written += len(self._write([entry]))
                continue
            except AuditRecordRejectedError as exc:
                error = str(exc)
            except AuditSinkUnavailableError:
                # The sink went down meanwhile: keep the rest for the next flush.
                rest = list(entries[entries.index(entry) :])
                with self._buffer_lock:
                    self._buffer = deque(rest + list(self._buffer))
                return written
            self._rejected += 1
            stored = self._dead_letter([entry], "rejected")
            failure = AuditEntry(
                action="audit_record_rejected",
                actor="audit",
                outcome="failure",
                details={
                    "rejected_action": entry.action,
                    "rejected_time": entry.time,
                    "error": error,
                    "dead_letter": stored,
                },
            )
            try:
                written += len(self._write([failure]))
            except AuditSinkUnavailableError:
                self._enqueue(failure)
        return written

    def _dead_letter(self, entries: Sequence[AuditEntry], why: str) -> bool:
        """Appends ``entries`` to the dead-letter file (0600); whether they were stored."""
        if self.dead_letter is None:
            return False
        return append_dead_letter(self.dead_letter, entries, why)

    def _load_pending(self) -> None:
        """Re-queues what an earlier shutdown could not flush (``why = pending``)."""
        if self.dead_letter is None:
            return
        pending = take_pending(self.dead_letter)
        with self._buffer_lock:
            self._buffer = deque(pending + list(self._buffer))

    def _persist_pending(self) -> int:
        """At shutdown with the sink down: writes the buffer where :meth:`attach` finds it."""
        with self._buffer_lock:
            entries = list(self._buffer)
            self._buffer.clear()
        if not entries or self.dead_letter is None:
            return 0
        ok = append_dead_letter(pending_path(self.dead_letter), entries, "pending")
        return len(entries) if ok else 0

    # -- checkpoints -------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint | None:
        """Publishes a signed checkpoint of the head this log last wrote to every anchor.

        Returns the checkpoint, or None when there was nothing new to anchor. An anchor that
        fails is logged and reported by :attr:`anchor_up`; the others still get it.
        """
        head = self._last_written
        if head is None or not self.anchors or head[0] == self._last_anchored:
            return None
        chain = self._chain
        if chain is None:
            return None
        cp = chain.sign_checkpoint(head[0], head[1], _now_iso())
        ok = True
        for anchor in self.anchors:
            try:
                anchor.publish(cp)
            except AuditSinkUnavailableError:
                ok = False
                _log.error("audit anchor %s unavailable", anchor.description)
        self._anchor_up = ok
        self._last_anchored = head[0]
        self._last_checkpoint_at = time.monotonic()
        return cp

    @property
    def anchor_up(self) -> bool:
        """Whether the last checkpoint reached every anchor."""
        return self._anchor_up

    @property
    def rejected(self) -> int:
        """Records the sink refused (sent to the dead-letter)."""
        return self._rejected

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
                if time.monotonic() - self._last_checkpoint_at >= self.checkpoint_interval:
                    self.checkpoint()
            except Exception as exc:  # the flusher must survive anything
                _log.warning("audit flush failed: %s", type(exc).__name__)

    def close(self) -> None:
        """Stops the flusher, flushes, anchors the head, and closes the sink.

        What cannot be flushed (the sink is down) is written to ``<dead_letter>.pending`` and
        re-queued by the next :meth:`attach`, instead of being lost.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.flush_interval))
            self._thread = None
        self.flush()
        if self._buffer:
            kept = self._persist_pending()
            if kept:
                _log.error("audit sink down at shutdown; %d event(s) saved to be replayed", kept)
        try:
            self.checkpoint()
        except Exception as exc:  # closing must finish
            _log.error("audit checkpoint at shutdown failed: %s", type(exc).__name__)
        self.sink.close()

    # -- reading -----------------------------------------------------------------------

    @property
    def sink_up(self) -> bool:
        """Whether the last write (or check) reached the sink."""
        return self._sink_up

    def add_sink_listener(self, listener: SinkListener) -> None:
        """Pushes the sink state to ``listener``: the current one now, then every change.

        A listener is called with true when the sink takes a write again after a failure, and
        with false when a write or check fails after a success; it must be quick and must not
        call back into the log's writing methods. An exception it raises is logged, not
        propagated.
        """
        with self._sink_lock:
            self._sink_listeners.append(listener)
            _tell(listener, self._sink_up)

    def _set_sink_up(self, up: bool) -> None:
        if up == self._sink_up:
            return
        # Under the lock, so listeners see the changes in the order the log made them and
        # the last value pushed is always the log's own.
        with self._sink_lock:
            if up == self._sink_up:
                return
            self._sink_up = up
            for listener in self._sink_listeners:
                _tell(listener, up)

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

    def verify(
        self, checkpoint: Checkpoint | str | Sequence[Checkpoint | str] | None = None
    ) -> VerifyResult:
        """Checks the whole chain, and checks it against the anchored checkpoints.

        Names each edited, deleted, inserted or reordered record, and fails when the log is
        missing or empty, ends before an anchored checkpoint (truncated), or holds another
        record at a checkpoint's sequence number (rewritten).

        Args:
            checkpoint: Further checkpoints to check against, for example the lines a
                :class:`~greenlang_crypto.audit.anchors.StreamAnchor` shipped (objects or
                lines; one or several).

        Raises:
            AuditSinkUnavailableError: The sink or the chain key cannot be read.
        """
        from greenlang_crypto.audit.anchors import StreamAnchor

        extra: list[Checkpoint] = []
        problems: list[VerifyProblem] = []
        given: Sequence[Checkpoint | str] = (
            []
            if checkpoint is None
            else [checkpoint]
            if isinstance(checkpoint, str | Checkpoint)
            else checkpoint
        )
        for item in given:
            if isinstance(item, Checkpoint):
                extra.append(item)
                continue
            try:
                extra.append(StreamAnchor.parse(item))
            except ValueError:
                problems.append(VerifyProblem(0, "anchor", "a given checkpoint is unreadable"))
        anchored = self._anchored(problems) + extra
        sink_path = getattr(self.sink, "path", None)
        if isinstance(sink_path, Path) and not sink_path.exists():
            # Do not let the sink create an empty log here: a missing log is the finding.
            where = f"; anchored up to seq {max(c.seq for c in anchored)}" if anchored else ""
            problems.append(
                VerifyProblem(1, "missing", f"the audit log {sink_path} is missing{where}")
            )
            return VerifyResult(0, problems)
        chain = self._ensure_chain(create=False)
        if chain is None:
            count = sum(1 for _ in self.sink.records())
            if count:
                problems.append(VerifyProblem(1, "unverifiable", "the audit root key is missing"))
            else:
                where = f" (anchored up to seq {max(c.seq for c in anchored)})" if anchored else ""
                problems.append(
                    VerifyProblem(
                        1, "missing", f"the audit log is empty and has no chain key{where}"
                    )
                )
            return VerifyResult(count, problems)
        good: dict[int, str] = {}
        for cp in anchored:
            if chain.check_checkpoint(cp):
                good[cp.seq] = cp.hmac
            else:
                problems.append(
                    VerifyProblem(cp.seq, "anchor", f"checkpoint at seq {cp.seq} has a bad MAC")
                )
        result = _verify(self.sink.records(), chain, self.sink.head(), good)
        problems.extend(result.problems)
        if result.records == 0 and not problems:
            problems.append(VerifyProblem(1, "missing", "the audit log holds no records"))
        return VerifyResult(result.records, problems)

    def _anchored(self, problems: list[VerifyProblem]) -> list[Checkpoint]:
        out: list[Checkpoint] = []
        for anchor in self.anchors:
            try:
                found = anchor.checkpoints()
            except AuditSinkUnavailableError:
                problems.append(
                    VerifyProblem(0, "unverifiable", f"anchor {anchor.description} unreadable")
                )
                continue
            if found is not None:
                out.extend(found)
        return out


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _tell(listener: SinkListener, up: bool) -> None:
    try:
        listener(up)
    except Exception as exc:  # a listener must not break the log's writes
        _log.warning("audit sink listener failed: %s", type(exc).__name__)
