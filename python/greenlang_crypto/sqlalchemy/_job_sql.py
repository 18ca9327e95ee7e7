"""SQL plumbing of column jobs: value reads off the log, quoting, retries and lease waits."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.engine.interfaces import Compiled
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.util import LRUCache

_RETRYABLE = (OperationalError, InterfaceError)
# Backoff between retries doubles from retry_delay up to this, so that the default retries
# cover a database restart or failover of several seconds without hammering it.
_MAX_RETRY_DELAY = 5.0
# Default patience for a silent lease holder beyond the lease itself (leases are database
# time, so no host clocks are involved): room for the waiting worker to see the lease expire
# and claim the range, and for a holder whose batch is slow but alive to commit.
_LEASE_MARGIN = 10.0
# How often a waiting worker looks at the ranges other workers hold (at most).
_POLL_SECONDS = 1.0

_T = TypeVar("_T")


class _LeaseLostError(Exception):
    """This worker no longer owns the range (its lease expired and another worker took it)."""


@dataclass(frozen=True)
class _OpenRange:
    range_id: int
    state: str
    owner: str | None
    lease_until: str | None
    processed: int
    seconds_left: float  # until its lease expires; 0 when expired or pending


@dataclass
class _LeaseWatch:
    """Decides how long a worker with nothing to claim waits for the ranges others hold.

    Any change of those ranges (a renewed lease, a checkpoint, a range finished or taken)
    shows a live worker, and the patience starts again; a dead worker changes nothing, so
    after ``patience`` seconds of silence the wait ends.
    """

    patience: float
    seen: tuple[tuple[Any, ...], ...] | None = None
    deadline: float = 0.0

    def pause(self, ranges: Sequence[_OpenRange]) -> float | None:
        """Seconds to sleep before claiming again, or None when patience ran out."""
        now = time.monotonic()
        key = tuple((r.range_id, r.state, r.owner, r.lease_until, r.processed) for r in ranges)
        if key != self.seen:
            self.seen = key
            self.deadline = now + self.patience
        elif now >= self.deadline:
            return None
        soonest = min(r.seconds_left for r in ranges)
        # Wake just after the soonest lease expires, but look again at least every poll
        # interval and never sleep past the deadline.
        return max(0.05, min(soonest + 0.05, _POLL_SECONDS, self.deadline - now))


# Compiled value reads by dialect and SQL text: a job runs the same few statements for every
# batch. Bounded, as the statements name tables and jobs.
_compiled: LRUCache[tuple[Dialect, str], Compiled] = LRUCache(256)


def _value_rows(conn: Connection, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Runs ``sql`` (``:name`` parameters) on ``conn``'s DBAPI cursor; returns every row.

    For the statements whose rows carry column values. SQLAlchemy's result objects log each
    row they fetch once the ``sqlalchemy.engine`` logger is at DEBUG (whatever ``echo`` and
    ``hide_parameters`` say), and a ``logging`` configuration can turn that on in any
    process; the DBAPI cursor has no such logging. The statement is compiled by the dialect
    (parameter style, escaping) and runs in the connection's transaction. A driver error
    is raised as SQLAlchemy's matching ``DBAPIError`` (parameters hidden), so the job's
    retries treat it as they treat any other.
    """
    key = (conn.dialect, sql)
    compiled = _compiled.get(key)
    if compiled is None:
        compiled = text(sql).compile(dialect=conn.dialect)
        _compiled[key] = compiled
    statement = compiled.string
    bound = compiled.construct_params(params)
    fairy = conn.connection
    dbapi = conn.dialect.loaded_dbapi
    cursor = fairy.cursor()
    try:
        cursor.execute(statement, bound)
        return list(cursor.fetchall())
    except dbapi.Error as exc:
        invalidated = conn.dialect.is_disconnect(exc, fairy.dbapi_connection, cursor)
        if invalidated:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            statement,
            None,
            exc,
            dbapi.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=conn.dialect,
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            cursor.close()


def _quote(conn: Connection, name: str) -> str:
    """``name`` (``schema.table`` or a column) quoted for SQL run through ``text()``.

    The preparer of a driver that reads ``%`` as a placeholder doubles it, and ``text()``
    doubles it again: a column ``e%mail`` would be looked for as ``e%%mail``. The preparer's
    doubling is undone here.
    """
    prep = conn.dialect.identifier_preparer
    doubles = prep.quote("%") != '"%"'
    quoted = (prep.quote(part) for part in name.split("."))
    return ".".join(q.replace("%%", "%") if doubles else q for q in quoted)


def _version_byte(value: bytes) -> int:
    return value[0] if value else 0
