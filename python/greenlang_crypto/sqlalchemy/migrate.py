# ruff: noqa: S608
# SQL text here is assembled only from identifiers quoted by the dialect's identifier preparer
# (table, column and schema names from the job spec) and the pk type read from pg_attribute;
# every value travels as a bound parameter.
"""Column jobs: plaintext -> ciphertext migration and key-rotation re-encryption (PostgreSQL).

One machinery serves both jobs (:class:`ColumnJob`, ``mode="encrypt"`` or ``"reencrypt"``):

* **Keyset batches.** Rows are read in primary-key order, ``batch_size`` at a time, inside pk
  ranges recorded in a job table (``encryption.glc_job_ranges``). Each batch is one
  transaction that writes the rows *and* advances the range's checkpoint, so a killed job
  resumes exactly after the last committed batch and never commits part of a batch. A batch
  costs four statements: lock the range and read the rows after its checkpoint (one
  statement), write, checkpoint, commit. The new envelopes of a batch are sealed in one call
  per tenant and its index values computed in one call per index key.
* **Compare-and-swap writes.** One ``UPDATE ... FROM unnest(<one array per field>) AS v
  WHERE t.pk = v.pk AND t.xmin = v.old RETURNING ...`` per batch writes ciphertext,
  key-version column and blind index together (one statement text whatever the batch, so
  it is parsed and planned once). A row the application changed meanwhile has another
  ``xmin`` and does not match; it is re-read and processed again (at most three rounds), so
  an application write is never lost. The old value is never a bound parameter: a phase-1
  plaintext would otherwise reach any statement log or exception that shows parameters.
* **Runs.** A job's identity is its mode, column, target versions, phase and a run id
  (``<name>@<run id>``). A worker joins the newest run that still has unfinished ranges, else
  starts a new run that rescans the whole table, so a rerun after a failure or after rows
  were quarantined processes those rows again. A worker that fails releases its ranges at
  once (no waiting for the lease).
* **A run ends only when every range is done.** A worker that finds nothing to claim while
  other workers still hold ranges waits: as long as those workers make progress (each batch
  renews its lease), and for at most ``wait_leases`` seconds without any progress, so that
  the lease of a dead worker expires and its ranges are taken over. If they still hold them
  then, :class:`~greenlang_crypto.exceptions.JobIncompleteError` says when a rerun can take
  them. Then :attr:`JobReport.remaining` is a direct SQL count of the rows that still need
  the job's work, so a run that reports success has left nothing behind.
* **Verify after write.** The UPDATE returns what it stored (``RETURNING`` the column and
  the index of every row it wrote, from the new row versions, which stay locked until the
  batch commits); every returned value is decrypted and compared with the plaintext, and
  every returned index with the one computed, before the transaction commits; a mismatch
  rolls the batch back. That is the guarantee of reading the rows back in the same
  transaction, without a second round trip.
* **Values stay out of logs.** The statements that return column values (the batch reads)
  run on the connection's DBAPI cursor, not through SQLAlchemy's result objects: with the
  ``sqlalchemy.engine`` logger at DEBUG those print every row they fetch, and in phase 1 the
  rows are plaintext. The driver itself logs no rows at any level. The write runs through
  SQLAlchemy (its events, its error handling), and the rows it returns (envelopes and index
  values) are fetched from the DBAPI cursor under the result, never through the result.
* **Quarantine.** A row that cannot be processed (undecryptable, missing key version,
  plaintext in phase 2, not UTF-8) is recorded in ``encryption.glc_quarantine`` with its pk,
  reason and key version, reported, and left unchanged; never dropped.
* **Retries.** A lost connection or a failed commit rolls the batch back and retries it, with
  backoff, at most ``max_retries`` times (every other statement of the job as well), so a job
  outlives a database restart; a batch is safe to repeat because its writes are CAS. When
  the database stays unreachable,
  :class:`~greenlang_crypto.exceptions.KeyStoreUnavailableError` is raised with the driver's
  error as its cause.
* **Workers.** Several processes split the job: each claims a pending pk range with
  ``FOR UPDATE SKIP LOCKED`` and holds it with a lease. Every batch first locks the row of
  its range (failing when the worker no longer owns it) and keeps it locked until it
  commits, renewing the lease with its checkpoint, so nobody takes over a range whose
  worker is alive; a range whose lease expired (a crashed worker) is claimed again and
  resumes from its checkpoint, and the worker it was taken from, should it come back, finds
  it no longer owns the range and drops its batch. A worker restarted under the same name
  takes its own ranges back at once.

Phases of a plaintext migration: in phase 1 the application's column type reads plaintext
or ciphertext (``allow_plaintext=True``) and the job encrypts what is plaintext (envelopes
are left alone, so nothing is encrypted twice: the magic byte 0xFA never occurs in UTF-8).
In phase 2 (:func:`enforce_ciphertext`) a non-envelope value is an error: the check fails on
any, and a CHECK constraint keeps new ones out.

Re-encryption moves every envelope below the primary key version to the primary
(decrypt + encrypt with the same context and associated data) and recomputes blind indexes
made with an older index key version. :meth:`ColumnJob.dry_run` counts rows per state and key
version, so :func:`retire_if_clear` only raises the minimum decryption version at zero.

Progress: pass ``progress=callable(processed, remaining)``; every job also feeds the
process-global :func:`greenlang_crypto.metrics.reencryption_progress` (rows by status
``success``/``skipped``/``failure``, and the remaining count), which ``/metrics`` exports.

Modules: :class:`ColumnJob` (here) runs a job over ``_job_batches`` (the rows of one batch:
classify, write, verify, quarantine), which builds on ``_job_ranges`` (the job table: runs,
ranges, leases, retries, the remaining count); ``_job_spec`` holds the spec and the reports,
``_job_sql`` the SQL plumbing they share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import conv

from greenlang_crypto import parse_envelope
from greenlang_crypto._core import ENVELOPE_MAGIC
from greenlang_crypto.exceptions import (
    GreenlangCryptoError,
    InvalidArgumentError,
    KeyStateError,
)
from greenlang_crypto.sqlalchemy._common import ContextCache, is_envelope
from greenlang_crypto.sqlalchemy._job_batches import _JobBatches, _Prepared
from greenlang_crypto.sqlalchemy._job_spec import (
    ColumnSpec,
    DryRunReport,
    JobReport,
    PlaintextFoundError,
    Progress,
    _Row,
)
from greenlang_crypto.sqlalchemy._job_sql import _LEASE_MARGIN, _LeaseLostError, _LeaseWatch, _quote
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex

if TYPE_CHECKING:
    from greenlang_crypto.service import EncryptionService

__all__ = [
    "ColumnJob",
    "ColumnSpec",
    "DryRunReport",
    "JobReport",
    "PlaintextFoundError",
    "ciphertext_check",
    "ciphertext_check_name",
    "enforce_ciphertext",
    "retire_if_clear",
]

# Every part of the column jobs logs under the name of the public module, so that one logging
# setting covers a job whichever of its modules speaks.
_log = logging.getLogger("greenlang_crypto.sqlalchemy.migrate")


def _room_for_read_ahead(engine: Engine) -> bool:
    """Whether the engine's pool can lend read-ahead its connection without starving the run.

    A run holds one connection for its batches and briefly checks out a second (claims,
    counts); read-ahead keeps a third for the run. A pool capped below that (``pool_size=2,
    max_overflow=0``, a ``StaticPool``) runs the job one batch at a time instead of making
    it wait for a connection that never comes back.
    """
    pool = engine.pool
    size = getattr(pool, "size", None)
    if not callable(size):
        # NullPool opens a connection per checkout (no cap); single-connection pools cannot.
        return type(pool).__name__ == "NullPool"
    overflow = getattr(pool, "_max_overflow", 0)
    if not isinstance(overflow, int) or overflow < 0:
        return True  # unlimited overflow
    return int(size()) + overflow >= 3


class ColumnJob(_JobBatches):
    """Encrypts (``mode="encrypt"``) or re-encrypts (``mode="reencrypt"``) one column.

    Args:
        engine: A PostgreSQL engine; or a connection in an open transaction (an Alembic
            migration's ``op.get_bind()``), on which the job then runs entirely: each batch
            is a SAVEPOINT, nothing commits before the caller's transaction does, and the
            job opens no connection of its own (which would wait on the caller's locks).
            A lost connection is then not retried (its transaction is gone).
        service: The EncryptionService (the only thing that encrypts or decrypts).
        spec: The column.
        mode: ``encrypt`` (phase 1 migration) or ``reencrypt`` (move to the primary version).
        forbid_plaintext: Phase 2: quarantine plaintext instead of encrypting it.
        batch_size: Rows per transaction.
        job_name: Job name (default from mode, table, column, phase and, for re-encryption,
            the target key and index versions); the job table holds ``<name>@<run id>``.
        run_id: Join this run (default: the newest unfinished run of the job, else a new
            one). Workers of one run share its ranges.
        worker: This worker's name (a restarted worker of the same name resumes its ranges).
        ranges: Number of pk ranges the job is split into when first planned.
        lease_seconds: How long a claimed range stays with a silent worker.
        wait_leases: How long a worker with nothing left to claim waits for ranges that other
            workers hold without making progress (default ``lease_seconds`` plus a margin,
            enough for a dead worker's lease to expire); then :meth:`run` raises
            :class:`~greenlang_crypto.exceptions.JobIncompleteError`.
        max_retries: Retries of one batch (or other statement) after a lost connection or
            failed commit.
        retry_delay: First backoff delay (doubles per retry, up to 5 seconds).
        state_schema: Schema of the job and quarantine tables.
        progress: ``progress(processed, remaining)`` after every batch.
        read_ahead: Read and plan the next batch on a connection of its own while the
            current one writes: a run then uses three of the engine's pooled connections
            instead of two (a pool capped below three runs without it, as does a job on a
            caller's connection). Off: one batch at a time.
    """

    def __init__(
        self,
        engine: Engine | Connection,
        service: EncryptionService,
        spec: ColumnSpec,
        *,
        mode: str = "encrypt",
        forbid_plaintext: bool = False,
        batch_size: int = 500,
        job_name: str | None = None,
        run_id: str | None = None,
        worker: str | None = None,
        ranges: int = 1,
        lease_seconds: float = 60.0,
        wait_leases: float | None = None,
        max_retries: int = 8,
        retry_delay: float = 0.1,
        state_schema: str = "encryption",
        progress: Progress | None = None,
        read_ahead: bool = True,
    ) -> None:
        if mode not in ("encrypt", "reencrypt"):
            raise InvalidArgumentError("mode must be 'encrypt' or 'reencrypt'")
        if engine.dialect.name != "postgresql":
            raise InvalidArgumentError("column jobs run on PostgreSQL")
        if not 1 <= batch_size <= 10_000:
            raise InvalidArgumentError("batch_size must be in 1..10000")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", state_schema):
            # The job tables come from the packaged DDL, which names its schema unquoted.
            raise InvalidArgumentError("state_schema must be a lowercase SQL identifier")
        if not lease_seconds > 0:
            raise InvalidArgumentError("lease_seconds must be positive")
        if wait_leases is not None and not wait_leases >= 0:
            raise InvalidArgumentError("wait_leases must not be negative")
        if max_retries < 0:
            raise InvalidArgumentError("max_retries must not be negative")
        if isinstance(engine, Connection):
            self._connection = engine
            self.engine = engine.engine
        else:
            self.engine = engine
        self.service = service
        self.spec = spec
        self.mode = mode
        self.forbid_plaintext = forbid_plaintext
        self.batch_size = batch_size
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.ranges = max(1, ranges)
        self.lease_seconds = lease_seconds
        self.wait_leases = lease_seconds + _LEASE_MARGIN if wait_leases is None else wait_leases
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.state_schema = state_schema
        self.progress = progress
        self.read_ahead = read_ahead
        self._contexts = ContextCache(spec.data_class)
        self._index: BlindIndex | None = None
        if spec.index_column:
            self._index = BlindIndex(
                spec.column,
                purpose=spec.index_purpose or f"{spec.table}.{spec.column}",
                normalizer=spec.index_normalizer,
                length=spec.index_length,
                per_tenant=spec.index_per_tenant,
                service=service,
                refresh_seconds=0.0,
            )
        self._target_version = service.primary_version
        self._target_index_version: int | None = None
        if self._index is not None:
            self._target_index_version = self._index.active_versions()[0]
        if job_name is None:
            job_name = f"{mode}:{spec.table}.{spec.column}"
            if mode == "reencrypt":
                job_name += f":v{self._target_version}"
                if self._target_index_version is not None:
                    job_name += f":i{self._target_index_version}"
            else:
                job_name += ":p2" if forbid_plaintext else ":p1"
        if "@" in job_name:
            raise InvalidArgumentError("job_name must not contain '@'")
        self.job_base = job_name
        self.run_id = run_id
        #: ``<job name>@<run id>`` once :meth:`run` has chosen the run.
        self.job_name = job_name if run_id is None else f"{job_name}@{run_id}"
        #: The figures of the latest :meth:`run` so far; after a
        #: :class:`~greenlang_crypto.exceptions.JobIncompleteError` they are this worker's
        #: share, with ``remaining`` counted.
        self.last_report: JobReport | None = None
        self._pk_type: str | None = None

    def run(self) -> JobReport:
        """Processes ranges until every range of the run is done; returns this worker's totals.

        Raises:
            KeyStoreUnavailableError: The database stayed unreachable through ``max_retries``
                retries (nothing of the failed batch was committed; rerun to resume).
            JobIncompleteError: Other workers still hold ranges of this run without progress
                after ``wait_leases`` seconds; ``retry_after`` says when their leases expire.
                :attr:`last_report` holds this worker's figures.
            KeyStateError: Verification after write failed (the batch was rolled back).
        """
        from greenlang_crypto.sqlalchemy._job_check import check_job

        check_job(self)  # a spec built from a model must round-trip a sample before any write
        started = time.perf_counter()
        self.last_report = None
        self._retrying(None, self.ensure_tables)
        self._retrying(None, self._plan)
        report = JobReport(self.job_name)
        self.last_report = report
        try:
            with self._holding():
                self._work(report)
        except BaseException:
            self._release()
            raise
        finally:
            report.seconds = time.perf_counter() - started
        # Every range is done: what is left is what the rows say, not what the ranges say.
        report.remaining = self._retrying(report, self.count_remaining)
        self._metrics_remaining(report.remaining)
        report.seconds = time.perf_counter() - started
        return report

    def _work(self, report: JobReport) -> None:
        # Read-ahead: the next batch is read and planned on a second connection while the
        # current one writes and commits (not inside a caller's transaction: a second
        # connection could wait on that transaction's own locks).
        pool = (
            ThreadPoolExecutor(1, thread_name_prefix="glc-job-read-ahead")
            if self.read_ahead and self._connection is None and _room_for_read_ahead(self.engine)
            else None
        )
        try:
            self._work_ranges(report, pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                self._drop_ahead()

    def _work_ranges(self, report: JobReport, pool: ThreadPoolExecutor | None) -> None:
        from greenlang_crypto.metrics import reencryption_progress

        metrics = reencryption_progress()
        remaining = self._retrying(report, self._remaining)
        metrics.set_remaining(remaining)
        counted = (0, 0, 0)
        watch: _LeaseWatch | None = None
        while True:
            claim = self._retrying(report, self._claim)
            if claim is None:
                open_ranges = self._retrying(report, self._open_ranges)
                if not open_ranges:
                    return  # every range of the run is done
                # Other workers hold what is left: a live one finishes it, a dead one's lease
                # expires and the next claim takes its ranges over.
                if watch is None:
                    watch = _LeaseWatch(self.wait_leases)
                pause = watch.pause(open_ranges)
                if pause is None:
                    raise self._incomplete(open_ranges, report)
                time.sleep(pause)
                continue
            watch = None
            range_id, hi = claim
            finished = False
            ahead: Future[_Prepared | None] | None = None

            def read_ahead(after: str, hi: str | None = hi) -> None:
                nonlocal ahead
                if pool is not None:
                    ahead = pool.submit(self._prepare, after, hi)

            while not finished:
                prepared = None if ahead is None else ahead.result()
                ahead = None
                try:
                    finished, count = self._retrying(
                        report, self._batch, range_id, hi, report, prepared, read_ahead
                    )
                except _LeaseLostError:
                    # Our lease ran out (a stall, an outage) and another worker took the
                    # range; its checkpoint is theirs now and our batch was rolled back.
                    _log.warning(
                        "range %d of %s was taken over by another worker", range_id, self.job_name
                    )
                    break
                remaining = max(0, remaining - count)
                metrics.add("success", report.written - counted[0])
                metrics.add("skipped", report.skipped - counted[1])
                metrics.add("failure", len(report.quarantined) - counted[2])
                metrics.set_remaining(remaining)
                counted = (report.written, report.skipped, len(report.quarantined))
                if self.progress is not None:
                    self.progress(report.scanned, remaining)

    # -- reporting -----------------------------------------------------------------------

    def dry_run(self, *, verify: bool = True) -> DryRunReport:
        """Counts rows per state, key version and index version; changes nothing.

        Args:
            verify: Also decrypt every envelope, counting failures per reason.
        """
        out = DryRunReport(self.spec.table, self.spec.column)
        last: str | None = None
        while True:
            with self._connect() as conn:
                n = self._names(conn)
                pk_type = self._pk_sql_type(conn)
                cond, params = "TRUE", {}
                if last is not None:
                    cond, params = f"t.{n['pk']} > CAST(:last AS {pk_type})", {"last": last}
                rows = self._select(conn, cond, params, limit=True)
            for row in rows:
                self._count(row, out, verify)
            if len(rows) < self.batch_size:
                return out
            last = rows[-1].pk_text

    def _count(self, row: _Row, out: DryRunReport, verify: bool) -> None:
        if row.value is None:
            out.null += 1
            return
        if self._index is not None:
            out.by_index_version[row.index[0] if row.index else 0] += 1
        if not is_envelope(row.value):
            out.plaintext += 1
            return
        try:
            version = parse_envelope(row.value).key_version
        except GreenlangCryptoError as exc:
            out.undecryptable[type(exc).__name__] += 1
            return
        out.by_key_version[version] += 1
        if verify:
            ctx = self._contexts.get(row.tenant)
            try:
                self.service.decrypt(row.value, ctx, associated_data=self._aad(row))
            except GreenlangCryptoError as exc:
                out.undecryptable[type(exc).__name__] += 1

    def quarantined(self) -> list[tuple[str, str, int | None]]:
        """The quarantine entries of this job: ``(pk, reason, key_version)``."""
        self.ensure_tables()
        with self._connect() as conn:
            n = self._names(conn)
            return [
                (str(pk), str(reason), version)
                for pk, reason, version in conn.execute(
                    text(
                        f"SELECT pk, reason, key_version FROM {n['quarantine']} "
                        "WHERE job = :j ORDER BY pk"
                    ),
                    {"j": self.job_name},
                )
            ]


# Quotes the column of a model's constraint as the job quotes it on PostgreSQL.
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def ciphertext_check_name(column: str) -> str:
    """The name of the phase-2 CHECK constraint of ``column``: ``glc_<column>_is_envelope``.

    One name whoever creates the constraint (:func:`enforce_ciphertext`, the CLI's phase 2,
    the Alembic operation ``op.forbid_plaintext``, a model declaring :func:`ciphertext_check`).
    """
    return f"glc_{column}_is_envelope"


def _ciphertext_predicate(col: str) -> str:
    """The phase-2 condition on the quoted column ``col``: NULL or an envelope (0xFA first)."""
    magic = f"get_byte({col}, 0) = {ENVELOPE_MAGIC:d}"
    return f"{col} IS NULL OR (octet_length({col}) > 0 AND {magic})"


def ciphertext_check(column: str, *, name: str | None = None) -> CheckConstraint:
    """The phase-2 CHECK constraint of ``column``, for a model's ``__table_args__``.

    The same name and condition that :func:`enforce_ciphertext` (and ``op.forbid_plaintext``)
    create, so a model declaring it matches the database: ``metadata.create_all`` of a fresh
    database creates it too. The name is final (``conv``): a ``naming_convention`` on the
    model's MetaData does not rename it. Declare it only once phase 2 is applied: phase 1
    still stores plaintext.

    Args:
        column: The encrypted column's name.
        name: Another constraint name (default :func:`ciphertext_check_name`).
    """
    quoted = _PG.identifier_preparer.quote(column)
    return CheckConstraint(
        _ciphertext_predicate(quoted), name=conv(name or ciphertext_check_name(column))
    )


@contextlib.contextmanager
def _unit(engine: Engine | Connection) -> Iterator[Connection]:
    """A transaction on ``engine``, or a SAVEPOINT in the open transaction of a connection."""
    if isinstance(engine, Connection):
        with engine.begin_nested():
            yield engine
    else:
        with engine.begin() as conn:
            yield conn


def enforce_ciphertext(
    engine: Engine | Connection,
    spec: ColumnSpec,
    *,
    add_constraint: bool = True,
    name: str | None = None,
) -> None:
    """Phase 2: fails if any value is not an envelope, then keeps new plaintext out.

    The check is ``col IS NULL OR get_byte(col, 0) = 250`` (``ENVELOPE_MAGIC``, 0xFA);
    with ``add_constraint`` it becomes the CHECK constraint :func:`ciphertext_check_name`
    (or ``name``), unless the table has a constraint of that name already.

    Args:
        engine: A PostgreSQL engine (one transaction), or a connection in an open transaction
            (an Alembic migration's; the work is a SAVEPOINT in it).
        spec: The column.
        add_constraint: Also add the CHECK constraint.
        name: The constraint name (default :func:`ciphertext_check_name`).

    Raises:
        PlaintextFoundError: Some rows hold plaintext (their count is in the message); nothing
            was changed.
    """
    constraint = name or ciphertext_check_name(spec.column)
    with _unit(engine) as conn:
        t, col = _quote(conn, spec.table), _quote(conn, spec.column)
        predicate = _ciphertext_predicate(col)
        bad = conn.execute(text(f"SELECT count(*) FROM {t} WHERE NOT ({predicate})")).scalar()
        if bad:
            raise PlaintextFoundError(f"{bad} row(s) of {spec.table}.{spec.column} hold plaintext")
        if add_constraint:
            exists = conn.execute(
                text(
                    "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(:t) AND conname = :n"
                ),
                {"t": t, "n": constraint},
            ).first()
            if not exists:
                conn.execute(
                    text(
                        f"ALTER TABLE {t} ADD CONSTRAINT {_quote(conn, constraint)} "
                        f"CHECK ({predicate})"
                    )
                )


def retire_if_clear(
    jobs: Sequence[ColumnJob], min_version: int, *, delete_stored_deks: bool = False
) -> dict[str, int]:
    """Raises the minimum decryption version only if no listed column has rows below it.

    Returns:
        Rows below ``min_version`` per ``table.column`` (all zero when it retired).

    Raises:
        KeyStateError: Some rows are still below (nothing was retired).
    """
    counts = {}
    for job in jobs:
        report = job.dry_run(verify=False)
        counts[f"{job.spec.table}.{job.spec.column}"] = report.rows_below(min_version)
    if any(counts.values()):
        raise KeyStateError(f"rows remain below version {min_version}: {counts}")
    jobs[0].service.retire_versions_below(min_version, delete_stored_deks=delete_stored_deks)
    return counts
