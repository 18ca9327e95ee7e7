# ruff: noqa: S608
# SQL text here is assembled only from identifiers quoted by the dialect's identifier preparer
# (table, column and schema names) and the pk type read from pg_attribute; every value travels
# as a bound parameter.
"""Purging erased values: the rows of a column whose keys were crypto-shredded (PostgreSQL).

After a tenant is erased (``EncryptionService.erase_tenant``, or its branch keys deleted),
its envelopes stay in the tables as bytes nobody can decrypt. :func:`purge_erased` finds them
and removes them: ``action="null"`` sets the column (and its blind-index and key-version
columns) to NULL, ``action="delete"`` deletes the rows.

* **No decryption.** Whether a value is erased is decided from its envelope header alone, by
  :meth:`EncryptionService.is_erased <greenlang_crypto.service.EncryptionService.is_erased>`:
  the purge needs no key of the data and works on rows of every tenant alike. Values that
  are not envelopes (a phase-1 plaintext) are counted and left alone.
* **Resumable.** Rows are read in primary-key order, ``batch_size`` at a time. Each batch is
  one transaction that locks its rows (``FOR UPDATE``, so an application write to one of them
  waits instead of being overwritten), purges the erased ones and advances the checkpoint
  and the counters of the run in ``<state_schema>.glc_purge_runs``. A killed purge resumes
  after its last committed batch, and its totals count every row once.
* **Concurrent admins.** Every batch first locks the run's row, reads the checkpoint from it
  and writes the new one before committing, so a second process running the same purge takes
  turns with the first and no batch is processed twice.
* **Dry run.** ``dry_run=True`` scans and counts without writing anything (no run state).
* **Bad arguments change nothing.** The table, columns and action are checked before the
  first write; ``action="null"`` on a ``NOT NULL`` column is refused up front.

A run is identified by the table, column and action. A call joins that run while it is
unfinished (``restart=True`` starts it over); after it finished, the next call starts a new
run from the first row.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from greenlang_crypto import parse_envelope
from greenlang_crypto.exceptions import (
    GreenlangCryptoError,
    InvalidArgumentError,
    KeyStoreUnavailableError,
)
from greenlang_crypto.sqlalchemy._common import is_envelope
from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec
from greenlang_crypto.sqlalchemy._job_sql import _MAX_RETRY_DELAY, _RETRYABLE, _quote, _value_rows

__all__ = [
    "PURGE_ACTIONS",
    "ErasureChecker",
    "PurgeReport",
    "PurgeTarget",
    "purge_erased",
]

_log = logging.getLogger("greenlang_crypto.sqlalchemy.purge")

#: What a purge does with an erased row: NULL its values, or delete it.
PURGE_ACTIONS = ("null", "delete")


class ErasureChecker(Protocol):
    """What a purge uses of the service (``EncryptionService`` satisfies it)."""

    def is_erased(self, envelope: bytes) -> bool:
        """Whether the envelope's key was erased, from its header (no decryption)."""
        ...


@dataclass(frozen=True)
class PurgeTarget:
    """The column a purge works on.

    Attributes:
        table: Table name, optionally schema-qualified.
        column: The encrypted (bytea) column.
        pk: The single-column primary key (keyset order and checkpoint).
        index_column: Its blind-index column, NULLed with it.
        version_column: Its key-version column, NULLed with it.
    """

    table: str
    column: str
    pk: str = "id"
    index_column: str | None = None
    version_column: str | None = None

    @classmethod
    def of(cls, column: Any, *, version_column: str | None = None) -> PurgeTarget:
        """The target of a model column, a :class:`ColumnSpec` or a target itself.

        Raises:
            InvalidArgumentError: ``column`` is none of those, or not an encrypted column.
        """
        if isinstance(column, PurgeTarget):
            return column
        if not isinstance(column, ColumnSpec):
            column = ColumnSpec.from_model(column, version_column=version_column)
        return cls(
            table=column.table,
            column=column.column,
            pk=column.pk,
            index_column=column.index_column,
            version_column=version_column or column.version_column,
        )


@dataclass
class PurgeReport:
    """What a purge found and did.

    Attributes:
        table: The table.
        column: The column.
        action: ``null`` or ``delete``.
        dry_run: Nothing was written.
        run: The run's id (``None`` in a dry run).
        scanned: Non-NULL values read by the run (all its processes, once each).
        erased: Of those, envelopes whose key is erased.
        purged: Rows NULLed or deleted (less than ``erased`` only if rows changed meanwhile).
        not_envelope: Values that are not envelopes (left alone).
        unreadable_header: Envelopes whose header does not parse (left alone).
        resumed_after: The checkpoint this call resumed from (a primary key as text), if any.
        finished: Every row was scanned.
        seconds: Wall time of this call.
    """

    table: str
    column: str
    action: str
    dry_run: bool
    run: str | None = None
    scanned: int = 0
    erased: int = 0
    purged: int = 0
    not_envelope: int = 0
    unreadable_header: int = 0
    resumed_after: str | None = None
    finished: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (no row values; the checkpoint is a primary key)."""
        return {
            "table": self.table,
            "column": self.column,
            "action": self.action,
            "dry_run": self.dry_run,
            "run": self.run,
            "scanned": self.scanned,
            "erased": self.erased,
            "purged": self.purged,
            "not_envelope": self.not_envelope,
            "unreadable_header": self.unreadable_header,
            "resumed_after": self.resumed_after,
            "finished": self.finished,
            "seconds": round(self.seconds, 3),
        }


def purge_erased(
    engine: Engine,
    column: Any,
    service: ErasureChecker,
    *,
    action: str = "null",
    dry_run: bool = False,
    batch_size: int = 500,
    restart: bool = False,
    version_column: str | None = None,
    state_schema: str = "encryption",
    max_retries: int = 8,
    retry_delay: float = 0.1,
    progress: Callable[[PurgeReport], None] | None = None,
) -> PurgeReport:
    """NULLs (or deletes) the rows of ``column`` whose envelopes' keys are erased.

    Example::

        report = purge_erased(engine, User.email, service, action="null")
        print(report.as_dict())

    Args:
        engine: A PostgreSQL engine.
        column: A model column (``User.email``), a :class:`ColumnSpec` or a
            :class:`PurgeTarget`.
        service: The EncryptionService (only :meth:`is_erased` is used).
        action: ``"null"`` (the column, its blind index and key-version column become NULL)
            or ``"delete"`` (the rows are deleted).
        dry_run: Count only; write nothing.
        batch_size: Rows per transaction (1..10000).
        restart: Forget an unfinished run's checkpoint and start from the first row.
        version_column: The column's key-version column, if any (NULLed with it).
        state_schema: Schema of the run table ``glc_purge_runs`` (created if missing).
        max_retries: Retries of one batch after a lost connection.
        retry_delay: First backoff delay (doubles, up to 5 s).
        progress: Called with the run's totals after every batch.

    Returns:
        The run's totals (over every process that worked on it).

    Raises:
        InvalidArgumentError: A bad argument, a table or column that does not exist, a pk
            that is not a unique NOT NULL key, or ``action="null"`` on a NOT NULL column
            (nothing was written); or the database refused a batch's change (a foreign key,
            a trigger, a grant: that batch rolled back, earlier ones stay purged).
        KeyStoreUnavailableError: The database stayed unreachable through ``max_retries``
            retries (committed batches stay; rerun to resume).
    """
    if action not in PURGE_ACTIONS:
        raise InvalidArgumentError(f"action must be one of {PURGE_ACTIONS}")
    if not 1 <= batch_size <= 10_000:
        raise InvalidArgumentError("batch_size must be in 1..10000")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", state_schema):
        raise InvalidArgumentError("state_schema must be a lowercase SQL identifier")
    if max_retries < 0:
        raise InvalidArgumentError("max_retries must not be negative")
    if engine.dialect.name != "postgresql":
        raise InvalidArgumentError("the purge runs on PostgreSQL")
    if not callable(getattr(service, "is_erased", None)):
        raise InvalidArgumentError("service must be an EncryptionService (with is_erased)")
    target = PurgeTarget.of(column, version_column=version_column)
    purge = _Purge(engine, service, target, action, batch_size, state_schema)
    purge.max_retries, purge.retry_delay = max_retries, retry_delay
    return purge.run(dry_run=dry_run, restart=restart, progress=progress)


class _Purge:
    def __init__(
        self,
        engine: Engine,
        service: ErasureChecker,
        target: PurgeTarget,
        action: str,
        batch_size: int,
        state_schema: str,
    ) -> None:
        self.engine = engine
        self.service = service
        self.target = target
        self.action = action
        self.batch_size = batch_size
        self.state_schema = state_schema
        self.job = f"purge:{target.table}.{target.column}:{action}"
        self.max_retries = 8
        self.retry_delay = 0.1
        self._pk_type = ""

    # -- plumbing ------------------------------------------------------------------------

    def _names(self, conn: Connection) -> dict[str, str]:
        t = self.target
        return {
            "t": _quote(conn, t.table),
            "pk": _quote(conn, t.pk),
            "col": _quote(conn, t.column),
            "runs": f"{_quote(conn, self.state_schema)}.glc_purge_runs",
        }

    def _retrying(self, op: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return op()
            except DBAPIError as exc:
                if not (isinstance(exc, _RETRYABLE) or exc.connection_invalidated):
                    raise
                attempt += 1
                if attempt > self.max_retries:
                    raise KeyStoreUnavailableError(
                        f"the database of {self.job} failed {attempt} times in a row "
                        f"({type(exc.orig or exc).__name__}); rerun to resume from the last "
                        "committed batch"
                    ) from exc
                _log.warning(
                    "database statement of %s failed (%s); retry %d/%d",
                    self.job,
                    type(exc.orig or exc).__name__,
                    attempt,
                    self.max_retries,
                )
                time.sleep(min(_MAX_RETRY_DELAY, self.retry_delay * 2 ** (attempt - 1)))

    def _validate(self) -> None:
        """The table and columns exist, the pk is a key, and NULL is allowed where written."""
        t = self.target
        with self.engine.connect() as conn:
            table = _quote(conn, t.table)
            if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
                raise InvalidArgumentError(f"no table {t.table!r}")
            rows = conn.execute(
                text(
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull "
                    "FROM pg_attribute a WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 "
                    "AND NOT a.attisdropped"
                ),
                {"t": table},
            ).all()
            columns = {str(name): (str(typ), bool(notnull)) for name, typ, notnull in rows}
            wanted = [t.pk, t.column, t.index_column, t.version_column]
            for name in wanted:
                if name is not None and name not in columns:
                    raise InvalidArgumentError(f"no column {name!r} in {t.table!r}")
            # A unique index (or the primary key) on the pk column alone, not partial.
            unique = conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
                    "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                    "WHERE i.indrelid = to_regclass(:t) AND i.indisunique AND i.indnkeyatts = 1 "
                    "AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = :pk)"
                ),
                {"t": table, "pk": t.pk},
            ).scalar()
        if columns[t.column][0] != "bytea":
            raise InvalidArgumentError(f"{t.table}.{t.column} is not a bytea column")
        if self.action == "null":
            for name in wanted[1:]:
                if name is not None and columns[name][1]:
                    raise InvalidArgumentError(
                        f"{t.table}.{name} is NOT NULL: use action 'delete' for this column"
                    )
        if not (unique and columns[t.pk][1]):
            # Pages are read by `pk > checkpoint`: rows sharing a value with the last row of
            # a page would be passed over (and rows without one never read), their erased
            # values left in place.
            raise InvalidArgumentError(
                f"{t.table}.{t.pk} is not unique and NOT NULL (no primary key or unique "
                "index on it alone): give the primary key as pk"
            )
        self._pk_type = columns[t.pk][0]

    def _ensure_table(self) -> None:
        with self.engine.begin() as conn:
            schema = _quote(conn, self.state_schema)
            # Concurrent purges would race on CREATE ... IF NOT EXISTS (catalog unique index).
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('glc_purge_runs'))"))
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
            conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {schema}.glc_purge_runs ("
                    "job text PRIMARY KEY, run_id text NOT NULL, "
                    "state text NOT NULL CHECK (state IN ('running', 'done')), "
                    "last_pk text, scanned bigint NOT NULL DEFAULT 0, "
                    "erased bigint NOT NULL DEFAULT 0, purged bigint NOT NULL DEFAULT 0, "
                    "not_envelope bigint NOT NULL DEFAULT 0, "
                    "unreadable_header bigint NOT NULL DEFAULT 0, "
                    "started_at timestamptz NOT NULL DEFAULT now(), "
                    "updated_at timestamptz NOT NULL DEFAULT now())"
                )
            )

    # -- the run -------------------------------------------------------------------------

    def run(
        self,
        *,
        dry_run: bool,
        restart: bool,
        progress: Callable[[PurgeReport], None] | None,
    ) -> PurgeReport:
        started = time.perf_counter()
        self._retrying(self._validate)
        report = PurgeReport(self.target.table, self.target.column, self.action, dry_run)
        if dry_run:
            self._dry_run(report)
        else:
            self._retrying(self._ensure_table)
            self._retrying(lambda: self._start(report, restart))
            while not report.finished:
                self._apply(report, self._retrying(lambda: self._batch(report)))
                if progress is not None:
                    progress(report)
        report.seconds = time.perf_counter() - started
        return report

    def _start(self, report: PurgeReport, restart: bool) -> None:
        """Joins the unfinished run of this purge, or starts a new one."""
        with self.engine.begin() as conn:
            n = self._names(conn)
            # One starter at a time: two processes that find no run would otherwise both
            # start one, and the second would take the run from under the first.
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:j))"), {"j": self.job})
            found = conn.execute(
                text(f"SELECT run_id, state, last_pk FROM {n['runs']} WHERE job = :j FOR UPDATE"),
                {"j": self.job},
            ).first()
            if found is not None and found[1] == "running" and not restart:
                report.run, report.resumed_after = str(found[0]), found[2]
                return
            run_id = f"{time.time_ns():020d}-{secrets.token_hex(3)}"
            conn.execute(
                text(
                    f"INSERT INTO {n['runs']} (job, run_id, state) VALUES (:j, :r, 'running') "
                    "ON CONFLICT (job) DO UPDATE SET run_id = EXCLUDED.run_id, "
                    "state = 'running', last_pk = NULL, scanned = 0, erased = 0, purged = 0, "
                    "not_envelope = 0, unreadable_header = 0, started_at = now(), "
                    "updated_at = now()"
                ),
                {"j": self.job, "r": run_id},
            )
            report.run = run_id

    def _classify(self, rows: list[tuple[Any, ...]]) -> tuple[list[str], int, int]:
        """The pks (text) of erased values; counts of non-envelopes and bad headers."""
        erased: list[str] = []
        plain = bad = 0
        # Rows of one batch mostly share a few keys: ask the service once per key reference
        # (each question is a key-store read). Per batch only, so a key erased while the
        # purge runs is seen from the next batch on.
        seen: dict[tuple[Any, ...], bool] = {}
        for _pk, pk_text, value in rows:
            stored = bytes(value)
            if not is_envelope(stored):
                plain += 1
                continue
            try:
                header = parse_envelope(stored)
            except GreenlangCryptoError:
                bad += 1
                continue
            ref = (header.kind, header.dek_id, header.branch_id)
            gone = seen.get(ref)
            if gone is None:
                # Outside the try: a key store that cannot answer is no bad header. Its error
                # ends the batch (rolled back, checkpoint unmoved), so no erased row is passed
                # over as unreadable and a rerun resumes here.
                gone = bool(self.service.is_erased(stored))
                if header.kind in ("stored", "branch"):
                    seen[ref] = gone
            if gone:
                erased.append(str(pk_text))
        return erased, plain, bad

    def _select(self, conn: Connection, last: str | None, *, lock: bool) -> list[tuple[Any, ...]]:
        n = self._names(conn)
        cond = f"t.{n['col']} IS NOT NULL"
        params: dict[str, Any] = {}
        if last is not None:
            cond += f" AND t.{n['pk']} > CAST(:last AS {self._pk_type})"
            params["last"] = last
        sql = (
            f"SELECT t.{n['pk']}, t.{n['pk']}::text, t.{n['col']} FROM {n['t']} AS t "
            f"WHERE {cond} ORDER BY t.{n['pk']} LIMIT {int(self.batch_size)}"
        )
        if lock:
            sql += " FOR UPDATE OF t"
        # The DBAPI cursor: SQLAlchemy's result objects log fetched rows at DEBUG.
        return _value_rows(conn, sql, params)

    def _dry_run(self, report: PurgeReport) -> None:
        last: str | None = None
        while True:

            def read(after: str | None = last) -> list[tuple[Any, ...]]:
                with self.engine.connect() as conn:
                    return self._select(conn, after, lock=False)

            rows = self._retrying(read)
            erased, plain, bad = self._classify(rows)
            report.scanned += len(rows)
            report.erased += len(erased)
            report.not_envelope += plain
            report.unreadable_header += bad
            if len(rows) < self.batch_size:
                report.finished = True
                return
            last = str(rows[-1][1])

    def _batch(self, report: PurgeReport) -> tuple[Any, ...]:
        """One transaction: lock the run, read and lock rows, purge, advance the checkpoint.

        Returns the run's totals as committed.
        """
        t = self.target
        with self.engine.begin() as conn:
            n = self._names(conn)
            run = conn.execute(
                text(f"SELECT run_id, state, last_pk FROM {n['runs']} WHERE job = :j FOR UPDATE"),
                {"j": self.job},
            ).first()
            if run is None or str(run[0]) != report.run:
                raise InvalidArgumentError(
                    f"the run of {self.job} was started over by another process; rerun"
                )
            if run[1] == "done":  # another process finished it
                totals = self._totals(conn)
                return totals
            rows = self._select(conn, run[2], lock=True)
            erased, plain, bad = self._classify(rows)
            purged = 0
            if erased:
                pks = {"pks": erased}
                match = f"{n['pk']} = ANY(CAST(:pks AS {self._pk_type}[]))"
                if self.action == "delete":
                    sql = f"DELETE FROM {n['t']} WHERE {match}"
                else:
                    sets = [f"{n['col']} = NULL"]
                    for extra in (t.index_column, t.version_column):
                        if extra is not None:
                            sets.append(f"{_quote(conn, extra)} = NULL")
                    sql = f"UPDATE {n['t']} SET {', '.join(sets)} WHERE {match}"
                try:
                    purged = conn.execute(text(sql), pks).rowcount
                except DBAPIError as exc:
                    if isinstance(exc, _RETRYABLE) or exc.connection_invalidated:
                        raise  # a lost connection: the batch is retried
                    # A foreign key, a trigger, a constraint or a grant refuses the change.
                    # SQLAlchemy's message would show the statement and the row keys; the
                    # constraint's name (a name, never a value) says which one.
                    diag = getattr(exc.orig, "diag", None)
                    constraint = getattr(diag, "constraint_name", None)
                    why = type(exc.orig or exc).__name__ + (
                        f", constraint {constraint}" if constraint else ""
                    )
                    raise InvalidArgumentError(
                        f"the database refused to {self.action} erased rows of "
                        f"{t.table}.{t.column} ({why}); this batch was rolled back, earlier "
                        "batches stay purged and a rerun resumes here"
                    ) from None
            done = len(rows) < self.batch_size
            conn.execute(
                text(
                    f"UPDATE {n['runs']} SET last_pk = :last, scanned = scanned + :s, "
                    "erased = erased + :e, purged = purged + :p, "
                    "not_envelope = not_envelope + :ne, "
                    "unreadable_header = unreadable_header + :bad, state = :state, "
                    "updated_at = now() WHERE job = :j"
                ),
                {
                    "last": str(rows[-1][1]) if rows else run[2],
                    "s": len(rows),
                    "e": len(erased),
                    "p": purged,
                    "ne": plain,
                    "bad": bad,
                    "state": "done" if done else "running",
                    "j": self.job,
                },
            )
            totals = self._totals(conn)
        return totals

    def _totals(self, conn: Connection) -> tuple[Any, ...]:
        n = self._names(conn)
        row = conn.execute(
            text(
                "SELECT scanned, erased, purged, not_envelope, unreadable_header, state "
                f"FROM {n['runs']} WHERE job = :j"
            ),
            {"j": self.job},
        ).one()
        return tuple(row)

    @staticmethod
    def _apply(report: PurgeReport, totals: tuple[Any, ...]) -> None:
        """The run's totals into ``report`` (only once their batch has committed)."""
        report.scanned, report.erased, report.purged = map(int, totals[:3])
        report.not_envelope, report.unreadable_header = int(totals[3]), int(totals[4])
        report.finished = totals[5] == "done"
