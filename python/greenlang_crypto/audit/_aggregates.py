"""Aggregated data-path records: encryptions and decryptions counted per flush interval.

The data path emits no event per operation by default; the service counts operations in Rust
and the audit log turns the difference between two snapshots into one record per operation,
data class and actor. Front doors that know the caller attribute operations to it
(:meth:`OperationAggregator.note`); the rest go to the log's own actor.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from greenlang_crypto.audit.records import AuditEntry, _now_iso
from greenlang_crypto.stats import ServiceStats

__all__ = ["OperationAggregator"]

_Ops = dict[tuple[str, str], int]


class OperationAggregator:
    """Turns successive :class:`~greenlang_crypto.stats.ServiceStats` snapshots into records.

    Unbound (no ``stats`` callable) or in per-operation mode it produces nothing: every
    operation is then a record of its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: Callable[[], ServiceStats] | None = None
        self._per_op = False
        self._last_ops: _Ops = {}
        self._attributed: Counter[tuple[str, str, str]] = Counter()
        self._carry: Counter[tuple[str, str]] = Counter()
        self._window_start = _now_iso()

    @property
    def per_operation(self) -> bool:
        """Whether the service emits one event per operation (nothing is aggregated)."""
        return self._per_op

    def bind(self, stats: Callable[[], ServiceStats], *, per_operation: bool) -> None:
        """Reads counts from ``stats``; the first window starts from its current counts."""
        self._stats = stats
        self._per_op = per_operation
        self._last_ops = self._read_ops()

    def restart(self) -> None:
        """Starts over in a forked child: the parent's attributions and window are its own."""
        self._lock = threading.Lock()
        self._attributed = Counter()
        self._carry = Counter()
        self._window_start = _now_iso()
        try:
            self._last_ops = self._read_ops()
        except Exception:  # counted from zero instead
            self._last_ops = {}

    def note(self, operation: str, data_class: str, actor: str) -> None:
        """Attributes one successful operation to ``actor`` in the next aggregate."""
        if not self._per_op:
            with self._lock:
                self._attributed[(operation, data_class, actor)] += 1

    def _read_ops(self) -> _Ops:
        if self._stats is None:
            return {}
        ops = self._stats().operations
        return {(op, dc): c.count for op, by_dc in ops.items() for dc, c in by_dc.items()}

    def take(self, default_actor: str) -> list[AuditEntry]:
        """The records of the operations since the last call; the rest go to ``default_actor``.

        Attributions beyond what the service counted in this window (the note raced ahead of
        the snapshot) are taken off the next window's unattributed count, so no operation is
        recorded twice.
        """
        if self._stats is None or self._per_op:
            return []
        # Snapshot the attributions before the service counters: an operation a front door
        # noted has always been counted by the service already.
        with self._lock:
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
                by_actor[default_actor] = by_actor.get(default_actor, 0) + rest
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
