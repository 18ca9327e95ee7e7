# ruff: noqa: S608
# SQL text here is assembled only from identifiers quoted by the dialect's identifier preparer
# (table, column and schema names from the job spec) and the pk type read from pg_attribute;
# every value travels as a bound parameter.
"""The job table of column jobs: runs, pk ranges, claims and leases, retries, the remaining count.

:class:`_JobTables` is the base of :class:`~greenlang_crypto.sqlalchemy.migrate.ColumnJob`: it
holds the job's settings and everything that reads or writes ``glc_job_ranges``, so the batch
code above it only processes rows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause

from greenlang_crypto._core import ENVELOPE_MAGIC
from greenlang_crypto.exceptions import (
    InvalidArgumentError,
    JobIncompleteError,
    KeyStoreUnavailableError,
)
from greenlang_crypto.sql import statements
from greenlang_crypto.sqlalchemy._common import ContextCache
from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec, JobReport, Progress
from greenlang_crypto.sqlalchemy._job_sql import (
    _MAX_RETRY_DELAY,
    _RETRYABLE,
    _T,
    _OpenRange,
    _quote,
)
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex

if TYPE_CHECKING:
    from greenlang_crypto.service import EncryptionService

# Every part of the column jobs logs under the name of the public module, so that one logging
# setting covers a job whichever of its modules speaks.
_log = logging.getLogger("greenlang_crypto.sqlalchemy.migrate")


class _JobTables:
    """A column job's settings and its ranges in the job table (see ``ColumnJob``)."""

    engine: Engine
    service: EncryptionService
    spec: ColumnSpec
    mode: str
    forbid_plaintext: bool
    batch_size: int
    worker: str
    ranges: int
    lease_seconds: float
    wait_leases: float
    max_retries: int
    retry_delay: float
    state_schema: str
    progress: Progress | None
    job_base: str
    run_id: str | None
    job_name: str
    last_report: JobReport | None
    _contexts: ContextCache
    _index: BlindIndex | None
    _target_version: int
    _target_index_version: int | None
    _pk_type: str | None
    #: The caller's connection (an Alembic migration's), or None: the job opens its own.
    _connection: Connection | None = None
    #: The connection a run's units share (``_holding``), or None: each checks one out.
    _held: Connection | None = None
    #: The batch UPDATE, built on first use (``_JobBatches._write_statement``).
    _write_sql: TextClause | None = None
    #: The batch's lock-and-read statement, without and with an upper bound (built on first
    #: use, ``_JobBatches._lock_and_read``).
    _batch_sql: dict[bool, str] | None = None
    #: The associated data of a column not bound to rows (built on first use).
    _location_aad: bytes | None = None

    # -- transactions --------------------------------------------------------------------

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One unit of the job's work: a transaction of its own, or a savepoint.

        On the caller's connection every unit is a SAVEPOINT inside the caller's transaction:
        a failed unit rolls back alone (the caller's transaction stays usable), and nothing
        commits before the caller does. The job opening a second connection instead would
        wait on the locks the caller's open transaction holds (an ``ALTER TABLE`` of the same
        table, for one) while the caller waits for the job: a deadlock no timeout resolves.
        """
        if self._connection is not None:
            with self._connection.begin_nested():
                yield self._connection
        elif self._held is not None:
            with self._held.begin():
                yield self._held
        else:
            with self.engine.begin() as conn:
                yield conn

    @contextlib.contextmanager
    def _holding(self) -> Iterator[None]:
        """Keeps one pooled connection for the units of the ``with`` block (a run's batches).

        A checkout per batch costs a round trip each time when the pool pings what it hands
        out (``pool_pre_ping``, as the CLI's engine does). After a failure the held
        connection is dropped and every later unit checks out its own again (pinged, so a
        database restart costs no further retry).
        """
        if self._connection is not None:
            yield
            return
        self._held = self.engine.connect()
        try:
            yield
        finally:
            self._drop_held()

    def _drop_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):  # a dead connection: the pool discards it
                held.close()

    def _connect(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for reads (the caller's, inside a savepoint, when one was given)."""
        if self._connection is None:
            return self._own_connection()
        return self._begin()

    @contextlib.contextmanager
    def _own_connection(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # -- SQL helpers ---------------------------------------------------------------------

    def _names(self, conn: Connection) -> dict[str, str]:
        s = self.spec
        return {
            "t": _quote(conn, s.table),
            "pk": _quote(conn, s.pk),
            "col": _quote(conn, s.column),
            "tenant": _quote(conn, s.tenant_column) if s.tenant_column else "NULL",
            "idx": _quote(conn, s.index_column) if s.index_column else "NULL",
            "ver": _quote(conn, s.version_column) if s.version_column else "",
            "ranges": f"{_quote(conn, self.state_schema)}.glc_job_ranges",
            "quarantine": f"{_quote(conn, self.state_schema)}.glc_quarantine",
        }

    def _pk_sql_type(self, conn: Connection) -> str:
        if self._pk_type is None:
            n = self._names(conn)
            found = conn.execute(
                text(
                    "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                    "WHERE a.attrelid = to_regclass(:t) AND a.attname = :c AND NOT a.attisdropped"
                ),
                {"t": n["t"], "c": self.spec.pk},
            ).scalar()
            if found is None:
                raise InvalidArgumentError(f"no column {self.spec.pk!r} in {self.spec.table!r}")
            self._pk_type = str(found)
        return self._pk_type

    def ensure_tables(self) -> None:
        """Creates the job and quarantine tables if missing, from the packaged migrations.

        The DDL is the ``jobs`` group of the ``sql/`` files (what ``db migrate`` creates), in
        ``state_schema``.
        """
        with self._begin() as conn:
            # Concurrent workers would race on CREATE ... IF NOT EXISTS (catalog unique index).
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('glc_job_tables'))"))
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {_quote(conn, self.state_schema)}"))
            for statement in statements("jobs", "postgresql", schema=self.state_schema):
                conn.execute(text(statement))

    def reset(self) -> None:
        """Forgets every run of this job (ranges and checkpoints; a later run starts over)."""
        self.ensure_tables()
        with self._begin() as conn:
            n = self._names(conn)
            conn.execute(
                text(f"DELETE FROM {n['ranges']} WHERE job = :b OR starts_with(job, :p)"),
                {"b": self.job_base, "p": self.job_base + "@"},
            )

    def _plan(self) -> None:
        with self._begin() as conn:
            n = self._names(conn)
            # One planner at a time per job, so concurrent workers join one run.
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:j))"), {"j": self.job_base})
            if self.run_id is None:
                # The newest run that still has unfinished ranges, if any: resume it.
                found = conn.execute(
                    text(
                        f"SELECT job FROM {n['ranges']} WHERE starts_with(job, :p) "
                        "AND state <> 'done' ORDER BY job DESC LIMIT 1"
                    ),
                    {"p": self.job_base + "@"},
                ).scalar()
                if found is not None:
                    self.job_name = str(found)
                    self.run_id = self.job_name.rpartition("@")[2]
                    return
                # Run ids sort by start time, so "newest" is the largest.
                self.run_id = f"{time.time_ns():020d}-{secrets.token_hex(3)}"
            self.job_name = f"{self.job_base}@{self.run_id}"
            exists = conn.execute(
                text(f"SELECT 1 FROM {n['ranges']} WHERE job = :j LIMIT 1"), {"j": self.job_name}
            ).first()
            if exists:
                return
            bounds: list[str] = []
            if self.ranges > 1:
                fractions = [i / self.ranges for i in range(1, self.ranges)]
                found = conn.execute(
                    text(
                        f"SELECT percentile_disc(CAST(:f AS float8[])) WITHIN GROUP "
                        f"(ORDER BY {n['pk']})::text[] FROM {n['t']}"
                    ),
                    {"f": fractions},
                ).scalar()
                bounds = list(dict.fromkeys(found or []))  # ascending; drop duplicate edges
            edges: list[str | None] = [None, *bounds, None]
            for i in range(len(edges) - 1):
                conn.execute(
                    text(
                        f"INSERT INTO {n['ranges']} (job, range_id, lo, hi) "
                        "VALUES (:j, :i, :lo, :hi) ON CONFLICT DO NOTHING"
                    ),
                    {"j": self.job_name, "i": i, "lo": edges[i], "hi": edges[i + 1]},
                )

    def _claim(self) -> tuple[int, str | None] | None:
        """Takes a pending range, an expired one, or one of this worker's own: (id, hi)."""
        with self._begin() as conn:
            n = self._names(conn)
            # A range row locked by a batch in progress is skipped: its worker is alive even
            # when that batch outlasts the lease.
            row = conn.execute(
                text(
                    f"UPDATE {n['ranges']} r SET state = 'running', owner = :w, "
                    "lease_until = clock_timestamp() + make_interval(secs => :lease) "
                    "WHERE (r.job, r.range_id) = ("
                    f"  SELECT job, range_id FROM {n['ranges']} WHERE job = :j AND ("
                    "    state = 'pending' OR (state = 'running' AND "
                    "    (lease_until < clock_timestamp() OR owner = :w)))"
                    "  ORDER BY range_id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                    "RETURNING r.range_id, r.hi"
                ),
                {"w": self.worker, "j": self.job_name, "lease": self.lease_seconds},
            ).first()
            return None if row is None else (int(row[0]), row[1])

    def _open_ranges(self) -> list[_OpenRange]:
        """The ranges of this run that are not done yet, with their holders and leases."""
        with self._connect() as conn:
            n = self._names(conn)
            rows = conn.execute(
                text(
                    "SELECT range_id, state, owner, lease_until::text, processed, "
                    "GREATEST(COALESCE(EXTRACT(EPOCH FROM lease_until - clock_timestamp()), "
                    f"0), 0)::float8 FROM {n['ranges']} WHERE job = :j AND state <> 'done' "
                    "ORDER BY range_id"
                ),
                {"j": self.job_name},
            ).all()
        return [
            _OpenRange(int(i), str(state), owner, until, int(done), float(left))
            for i, state, owner, until, done, left in rows
        ]

    def _remaining(self) -> int:
        """Rows not yet read by this run (an estimate for progress; the total is counted)."""
        with self._connect() as conn:
            n = self._names(conn)
            total = conn.execute(text(f"SELECT count(*) FROM {n['t']}")).scalar() or 0
            done = (
                conn.execute(
                    text(f"SELECT COALESCE(sum(processed), 0) FROM {n['ranges']} WHERE job = :j"),
                    {"j": self.job_name},
                ).scalar()
                or 0
            )
        return max(0, int(total) - int(done))

    def _retrying(self, report: JobReport | None, op: Callable[..., _T], *args: Any) -> _T:
        """Runs ``op`` (one transaction), again after a lost connection, with backoff.

        Raises:
            KeyStoreUnavailableError: The database still failed after ``max_retries``
                retries (the driver's error is the cause).
        """
        attempt = 0
        while True:
            try:
                return op(*args)
            except DBAPIError as exc:
                if not (isinstance(exc, _RETRYABLE) or exc.connection_invalidated):
                    raise
                self._drop_held()
                if self._connection is not None:
                    # The caller's transaction died with its connection: everything the job
                    # did in it is gone, so only a rerun of the caller (the migration) helps.
                    raise KeyStoreUnavailableError(
                        f"the connection of job {self.job_name} failed "
                        f"({type(exc.orig or exc).__name__}); its transaction was rolled back, "
                        "rerun the migration"
                    ) from exc
                attempt += 1
                if attempt > self.max_retries:
                    # Only the error type: the driver's message may quote the statement.
                    raise KeyStoreUnavailableError(
                        f"the database of job {self.job_name} failed "
                        f"{self.max_retries + 1} times in a row "
                        f"({type(exc.orig or exc).__name__}); rerun to resume from the last "
                        "committed batch"
                    ) from exc
                if report is not None:
                    report.retries += 1
                _log.warning(
                    "database statement of %s failed (%s); retry %d/%d",
                    self.job_name,
                    type(exc.orig or exc).__name__,
                    attempt,
                    self.max_retries,
                )
                time.sleep(min(_MAX_RETRY_DELAY, self.retry_delay * 2 ** (attempt - 1)))

    def _release(self) -> None:
        """Gives this worker's unfinished ranges back at once (after a failure)."""
        try:
            with self._begin() as conn:
                n = self._names(conn)
                conn.execute(
                    text(
                        f"UPDATE {n['ranges']} SET state = 'pending', owner = NULL, "
                        "lease_until = NULL WHERE job = :j AND owner = :w AND state = 'running'"
                    ),
                    {"j": self.job_name, "w": self.worker},
                )
        except Exception as exc:  # the original failure matters more; the lease still expires
            _log.warning(
                "could not release the ranges of %s (%s)", self.job_name, type(exc).__name__
            )

    def count_remaining(self) -> int:
        """Rows of the column that still need this job's work (one SQL count).

        Plaintext rows; in re-encryption also envelopes below the target key version; with a
        blind index also envelopes whose index is missing or, in re-encryption, made with
        another index key version. The key version is the header's bytes 4-7 (big-endian).
        """
        with self._connect() as conn:
            n = self._names(conn)
            col = n["col"]
            # CASE, not AND: SQL does not promise to evaluate AND left to right, and
            # get_byte past the end of a short value is an error.
            envelope = (
                f"(CASE WHEN octet_length({col}) > 0 "
                f"THEN get_byte({col}, 0) = {ENVELOPE_MAGIC:d} ELSE false END)"
            )
            needs = [f"NOT {envelope}"]
            params: dict[str, Any] = {}
            if self.mode == "reencrypt":
                version = " | ".join(
                    f"(get_byte({col}, {i})::bigint << {8 * (7 - i)})" for i in range(4, 8)
                )
                needs.append(
                    f"({envelope} AND (CASE WHEN octet_length({col}) >= 8 "
                    f"THEN ({version}) < :target OR get_byte({col}, 1) < :format "
                    "ELSE false END))"
                )
                params["target"] = self._target_version
                params["format"] = self.service.envelope_format
            if self.spec.index_column:
                idx = n["idx"]
                stale = f"{idx} IS NULL"
                if self.mode == "reencrypt":
                    stale += (
                        f" OR (CASE WHEN octet_length({idx}) > 0 THEN get_byte({idx}, 0) "
                        "ELSE 0 END) <> :index_version"
                    )
                    params["index_version"] = self._target_index_version or 0
                needs.append(f"({envelope} AND ({stale}))")
            found = conn.execute(
                text(
                    f"SELECT count(*) FROM {n['t']} "
                    f"WHERE {col} IS NOT NULL AND ({' OR '.join(needs)})"
                ),
                params,
            ).scalar()
        return int(found or 0)

    @staticmethod
    def _metrics_remaining(remaining: int) -> None:
        from greenlang_crypto.metrics import reencryption_progress

        reencryption_progress().set_remaining(remaining)

    def _incomplete(self, ranges: Sequence[_OpenRange], report: JobReport) -> JobIncompleteError:
        """The error for ranges that other, silent workers still hold (remaining counted)."""
        report.remaining = self._retrying(report, self.count_remaining)
        self._metrics_remaining(report.remaining)
        retry_after = float(max(1, math.ceil(max(r.seconds_left for r in ranges))))
        holders = ", ".join(sorted({r.owner or "nobody" for r in ranges}))
        return JobIncompleteError(
            f"{len(ranges)} range(s) of job {self.job_name} are still leased to {holders}, "
            f"which made no progress for {self.wait_leases:g} s (a worker may have died); "
            f"{report.remaining} row(s) remain; rerun after {retry_after:.0f} s to take the "
            "ranges over",
            retry_after=retry_after,
        )
