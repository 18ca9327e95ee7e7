"""Refused requests (401 and 403) audited as counts per source and interval.

A record per refusal lets anyone who can reach the port, or any token holder, write to the
audit log at request rate: a flood of bad tokens or missing permissions then fills the sink,
pushes real events out of the bounded buffer and drowns the records an investigator needs.
The API therefore counts refusals in memory by ``(source address, reason)`` and writes, per
interval, one ``access_refused`` record per source that was refused:

* ``details.count``: refusals from that source in the interval; ``details.unauthenticated``
  and ``details.forbidden`` split it by status; ``details["reason:<reason>"]`` by reason;
* ``details.source``: the client address as the server saw it (behind a proxy, the proxy's,
  unless the server is told to trust its forwarding headers);
* ``details.since``: when the interval began (the record's time is when it ended);
* ``details["route:<METHOD> <path>"]``: refusals by API route (only routes the API serves);
* ``details.subjects``: the authenticated token subjects refused from that source (a JSON
  list, at most :data:`MAX_SUBJECTS`; ``details.subjects_omitted`` counts the others).

Memory stays bounded whatever the traffic: reasons come from a fixed set, at most
``max_sources`` sources are counted apart per interval (the rest share the source ``other``),
and each keeps at most :data:`MAX_SUBJECTS` subjects and :data:`MAX_ROUTES` routes. Pending
counts are written at every interval and by :meth:`RefusalAggregator.close` (the API's
shutdown), before the audit log itself is closed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from greenlang_crypto import _forks
from greenlang_crypto.audit.records import MAX_FIELD_CHARS, _now_iso

if TYPE_CHECKING:
    from greenlang_crypto.audit import AuditLog

__all__ = [
    "MAX_SUBJECTS",
    "REASONS",
    "RefusalAggregator",
]

_log = logging.getLogger("greenlang_crypto.api")

#: Why a request was refused. Counting by a fixed set (never by request content) keeps the
#: number of counters bounded.
REASONS = frozenset(
    {
        # 401: no bearer token / a token that did not verify.
        "no_token",
        "bad_token",
        # 403: the route's permission is missing.
        "permission",
        # 403: a fleet-wide route called by a token without the fleet grant.
        "fleet_scope",
        # 403: a tenant route called by a token that names no tenant.
        "no_tenant",
        # 403: the context names another tenant than the token.
        "tenant_mismatch",
        # Anything else a caller reports (counted, never named after request content).
        "other",
    }
)
_UNAUTHENTICATED = frozenset({"no_token", "bad_token"})
#: Subjects kept per source and interval.
MAX_SUBJECTS = 8
#: Routes counted apart per source and interval (the API has fewer).
MAX_ROUTES = 16
#: The shared source once ``max_sources`` distinct sources were counted in an interval.
OVERFLOW_SOURCE = "other"
#: The source when the server does not know the client address.
UNKNOWN_SOURCE = "unknown"


@dataclass
class _Source:
    reasons: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    subjects: set[str] = field(default_factory=set)
    omitted: int = 0


class RefusalAggregator:
    """Counts refusals and writes one ``access_refused`` record per source and interval.

    The first refusal starts a daemon thread that writes the counts every ``interval``
    seconds; :meth:`close` stops it and writes what is pending. Records go through
    :meth:`AuditLog.record` with ``required=False``: buffered, never blocking a request, kept
    (and counted) by the log while its sink is down.

    Args:
        audit: The audit log the records go to.
        interval: Seconds between writes.
        max_sources: Sources counted apart per interval.
    """

    def __init__(self, audit: AuditLog, *, interval: float = 60.0, max_sources: int = 1024) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.audit = audit
        self.interval = interval
        self.max_sources = max_sources
        self._lock = threading.Lock()
        _forks.fresh_locks_after_fork(self, "_lock")
        self._sources: dict[str, _Source] = {}
        self._since = _now_iso()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note(
        self,
        source: str | None,
        reason: str,
        subject: str | None = None,
        route: str | None = None,
    ) -> None:
        """Counts one refusal (cheap; never raises, never blocks on the audit sink).

        Args:
            source: The client address, if known.
            reason: One of :data:`REASONS`.
            subject: The token subject, when the token was valid.
            route: ``"<METHOD> <path>"`` of an API route (never a path the client made up:
                those would grow the counters).
        """
        if reason not in REASONS:
            # A caller's bug must not grow the counters without bound.
            reason = "other"
        key = source or UNKNOWN_SOURCE
        with self._lock:
            entry = self._sources.get(key)
            if entry is None:
                if len(self._sources) >= self.max_sources:
                    key = OVERFLOW_SOURCE
                    entry = self._sources.get(key)
                if entry is None:
                    entry = self._sources[key] = _Source()
            entry.reasons[reason] += 1
            if route is not None and (route in entry.routes or len(entry.routes) < MAX_ROUTES):
                entry.routes[route] += 1
            if subject is not None and subject not in entry.subjects:
                if len(entry.subjects) < MAX_SUBJECTS:
                    entry.subjects.add(subject)
                else:
                    entry.omitted += 1
            self._ensure_thread()

    def pending(self) -> int:
        """Refusals counted and not yet written."""
        with self._lock:
            return sum(sum(s.reasons.values()) for s in self._sources.values())

    def flush(self) -> int:
        """Writes one record per source counted since the last write; returns how many."""
        with self._lock:
            sources, self._sources = self._sources, {}
            since, self._since = self._since, _now_iso()
        for source, entry in sorted(sources.items()):
            unauthenticated = sum(n for r, n in entry.reasons.items() if r in _UNAUTHENTICATED)
            total = sum(entry.reasons.values())
            details: dict[str, str | int | bool] = {
                "aggregated": True,
                "source": source,
                "since": since,
                "count": total,
                "unauthenticated": unauthenticated,
                "forbidden": total - unauthenticated,
            }
            for reason, n in sorted(entry.reasons.items()):
                details[f"reason:{reason}"] = n
            for route, n in sorted(entry.routes.items()):
                details[f"route:{route}"] = n
            subjects, omitted = _subjects(entry)
            if subjects:
                details["subjects"] = subjects
            if omitted:
                details["subjects_omitted"] = omitted
            self.audit.record(
                "access_refused",
                actor="api",
                outcome="denied",
                details=details,
                required=False,
            )
        return len(sources)

    def close(self) -> None:
        """Stops the writer thread and writes what is pending."""
        with self._lock:
            stop, thread = self._stop, self._thread
            # Refusals noted after this (a request still in flight) start a new writer.
            self._stop = threading.Event()
            self._thread = None
        stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self.flush()

    def _ensure_thread(self) -> None:
        # Under the lock. Started lazily, so a process that forks after building the app (and
        # before any refusal) starts its own; a forked child finds the parent's thread dead.
        if self._thread is not None and self._thread.is_alive():
            return
        stop = self._stop
        self._thread = threading.Thread(
            target=self._run, args=(stop,), name="glc-api-refusals", daemon=True
        )
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.flush()
            except Exception as exc:  # the writer must survive anything
                _log.warning("writing refusal counts failed: %s", type(exc).__name__)


def _subjects(entry: _Source) -> tuple[str, int]:
    """The subjects as a JSON list that fits one record field, and how many were left out."""
    kept: list[str] = []
    omitted = entry.omitted
    for subject in sorted(entry.subjects):
        # Audit fields are cut at MAX_FIELD_CHARS; a cut list would not parse.
        if len(json.dumps([*kept, subject])) > MAX_FIELD_CHARS:
            omitted += 1
        else:
            kept.append(subject)
    return (json.dumps(kept) if kept else ""), omitted
