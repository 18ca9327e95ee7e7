# ruff: noqa: S608
# SQL text here is assembled only from identifiers quoted by the dialect's identifier preparer
# (table, column and schema names from the job spec) and the pk type read from pg_attribute;
# every value travels as a bound parameter.
"""Column jobs: plaintext -> ciphertext migration and key-rotation re-encryption (PostgreSQL).

One machinery serves both jobs (:class:`ColumnJob`, ``mode="encrypt"`` or ``"reencrypt"``):

* **Keyset batches.** Rows are read in primary-key order, ``batch_size`` at a time, inside pk
  ranges recorded in a job table (``encryption.glc_job_ranges``). Each batch is one
  transaction that writes the rows *and* advances the range's checkpoint, so a killed job
  resumes exactly after the last committed batch and never commits part of a batch.
* **Compare-and-swap writes.** One ``UPDATE ... FROM (VALUES ...) WHERE t.pk = v.pk AND
  t.xmin = v.xmin RETURNING ...`` per batch writes ciphertext, key-version column and blind
  index together. A row the application changed meanwhile has another ``xmin`` and does not
  match; it is re-read and processed again (at most three rounds), so an application write
  is never lost. The old value is never a bound parameter: a phase-1 plaintext would
  otherwise reach any statement log or exception that shows parameters.
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
* **Verify after write.** Every value that UPDATE wrote is read back, decrypted and compared
  with the plaintext before the transaction commits; a mismatch rolls the batch back.
* **Values stay out of logs.** The statements that return column values (the batch reads
  and the read-back of what a batch wrote) run on the connection's DBAPI cursor, not
  through SQLAlchemy's result objects: with the ``sqlalchemy.engine`` logger at DEBUG those
  print every row they fetch, and in phase 1 the rows are plaintext. The driver itself logs
  no rows at any level. The writes still go through SQLAlchemy and return keys only.
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
  ``FOR UPDATE SKIP LOCKED`` and holds it with a lease. Every batch first renews the lease of
  its range and keeps the range row locked until it commits, so nobody takes over a range
  whose worker is alive; a range whose lease expired (a crashed worker) is claimed again and
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
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import os
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Column, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from greenlang_crypto import parse_envelope
from greenlang_crypto._core import ENVELOPE_MAGIC
from greenlang_crypto.exceptions import (
    GreenlangCryptoError,
    InvalidArgumentError,
    JobIncompleteError,
    KeyStateError,
    KeyStoreUnavailableError,
)
from greenlang_crypto.sql import statements
from greenlang_crypto.sqlalchemy._common import ContextCache, is_envelope, location_aad, row_aad
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex, Normalizer

if TYPE_CHECKING:
    from greenlang_crypto.service import EncryptionService

__all__ = [
    "ColumnJob",
    "ColumnSpec",
    "DryRunReport",
    "JobReport",
    "PlaintextFoundError",
    "enforce_ciphertext",
    "retire_if_clear",
]

_log = logging.getLogger("greenlang_crypto.sqlalchemy.migrate")

Progress = Callable[[int, int], None]


class PlaintextFoundError(GreenlangCryptoError):
    """Phase 2 found values that are not envelopes."""


@dataclass(frozen=True)
class ColumnSpec:
    """Where a column lives and how its values are encrypted (must match its column type).

    Attributes:
        table: Table name, optionally schema-qualified (``security.login_attempts``); the
            same text as the model's ``Table.fullname`` (it is part of the associated data).
        column: The bytea column (plaintext UTF-8 or envelope).
        pk: The primary-key column (a single column; keyset order).
        data_class: ``data_class`` of the context.
        tenant_id: A fixed tenant; or ``tenant_column`` gives it per row.
        tenant_column: Column holding each row's tenant.
        bind_row: The column type binds values to the primary key (``bind_row=True``).
        kind: ``"str"`` (plaintext must be UTF-8) or ``"bytes"``.
        version_column: Optional integer column that mirrors each envelope's key version;
            written in the same UPDATE as the ciphertext.
        index_column: Optional blind-index column.
        index_purpose: Its purpose (default ``"<table>.<column>"``, as :class:`BlindIndex`).
        index_normalizer: Its normalizers (as declared on the model).
        index_length: Its MAC length.
        index_per_tenant: Whether it uses per-tenant keys.
    """

    table: str
    column: str
    pk: str = "id"
    data_class: str = "pii"
    tenant_id: str | None = None
    tenant_column: str | None = None
    bind_row: bool = False
    kind: str = "str"
    version_column: str | None = None
    index_column: str | None = None
    index_purpose: str | None = None
    index_normalizer: tuple[Normalizer, ...] = ()
    index_length: int = 16
    index_per_tenant: bool = False

    def __post_init__(self) -> None:
        if (self.tenant_id is None) == (self.tenant_column is None):
            raise InvalidArgumentError("give exactly one of tenant_id and tenant_column")
        if self.kind not in ("str", "bytes"):
            raise InvalidArgumentError("kind must be 'str' or 'bytes'")

    @classmethod
    def from_model(
        cls, column: Any, *, version_column: str | None = None, **overrides: Any
    ) -> ColumnSpec:
        """Builds the spec of an encrypted model column (a ``Column`` or mapped attribute)."""
        from greenlang_crypto.sqlalchemy._common import FromRow
        from greenlang_crypto.sqlalchemy.blind_index import index_for_source
        from greenlang_crypto.sqlalchemy.types import EncryptedBytes, EncryptedType

        col: Column[Any] = column.property.columns[0] if hasattr(column, "property") else column
        typ = col.type
        if not isinstance(typ, EncryptedType):
            raise InvalidArgumentError("not an encrypted column")
        table, name = typ.table_column
        pk_cols = list(col.table.primary_key.columns)
        if len(pk_cols) != 1:
            raise InvalidArgumentError("the job needs a single-column primary key")
        spec: dict[str, Any] = {
            "table": table,
            "column": name,
            "pk": pk_cols[0].name,
            "data_class": typ.data_class,
            "bind_row": typ.bind_row,
            "kind": "bytes" if isinstance(typ, EncryptedBytes) else "str",
            "version_column": version_column,
        }
        tenant = typ.tenant_id
        if isinstance(tenant, FromRow):
            tenant_col = col.table.c[tenant.attribute]  # attribute == column name required
            spec["tenant_column"] = tenant_col.name
        elif isinstance(tenant, str):
            spec["tenant_id"] = tenant
        else:
            raise InvalidArgumentError("a callable tenant cannot be migrated; pass tenant_id")
        index_col = index_for_source(col)
        if index_col is not None:
            index: BlindIndex = index_col.type
            spec.update(
                index_column=index_col.name,
                index_purpose=index.purpose or f"{table}.{name}",
                index_normalizer=index.normalizer,
                index_length=index.length,
                index_per_tenant=index.per_tenant,
            )
        spec.update(overrides)
        return cls(**spec)


@dataclass
class DryRunReport:
    """Rows per state of one column.

    Attributes:
        table: The table.
        column: The column.
        null: NULL values.
        plaintext: Non-envelope values.
        by_key_version: Envelopes per key version (from the public header).
        undecryptable: Envelopes that failed to decrypt, by reason (error type).
        by_index_version: Blind-index values per index key version (``0``: missing).
    """

    table: str
    column: str
    null: int = 0
    plaintext: int = 0
    by_key_version: Counter[int] = field(default_factory=Counter)
    undecryptable: Counter[str] = field(default_factory=Counter)
    by_index_version: Counter[int] = field(default_factory=Counter)

    def rows_below(self, version: int) -> int:
        """Envelopes under key versions below ``version`` (plus any plaintext)."""
        return self.plaintext + sum(n for v, n in self.by_key_version.items() if v < version)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {
            "table": self.table,
            "column": self.column,
            "null": self.null,
            "plaintext": self.plaintext,
            "by_key_version": dict(sorted(self.by_key_version.items())),
            "undecryptable": dict(self.undecryptable),
            "by_index_version": dict(sorted(self.by_index_version.items())),
        }


@dataclass
class JobReport:
    """Outcome of one :meth:`ColumnJob.run` (this worker's share).

    Attributes:
        job: The job name.
        scanned: Rows read.
        written: Rows rewritten (ciphertext and/or index).
        skipped: Rows already in the target state (or NULL).
        quarantined: Rows recorded in the quarantine table, as ``(pk, reason, key_version)``.
        contended: CAS misses that were re-read and processed again.
        retries: Statements retried after a lost connection or failed commit.
        seconds: Wall time.
        remaining: Rows of the whole column that still need the job's work, counted with one
            SQL query once every range of the run is done (or when the run gives up waiting
            for another worker's ranges): plaintext; in re-encryption also envelopes below
            the target key version; with a blind index also envelopes whose index is missing
            or, in re-encryption, under another index key version. -1 only before counting.
    """

    job: str
    scanned: int = 0
    written: int = 0
    skipped: int = 0
    quarantined: list[tuple[str, str, int | None]] = field(default_factory=list)
    contended: int = 0
    retries: int = 0
    seconds: float = 0.0
    remaining: int = -1

    @property
    def rows_per_second(self) -> float:
        """Rows read per second."""
        return self.scanned / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        """False when rows were quarantined or are left to process (or were not counted)."""
        return not self.quarantined and self.remaining == 0

    def summary(self) -> dict[str, Any]:
        """The figures an operator and the audit record need (no row values)."""
        return {
            "job": self.job,
            "scanned": self.scanned,
            "written": self.written,
            "skipped": self.skipped,
            "quarantined": len(self.quarantined),
            "remaining": self.remaining,
            "contended": self.contended,
            "retries": self.retries,
        }


@dataclass
class _Row:
    pk: Any
    pk_text: str
    value: bytes | None
    tenant: str
    index: bytes | None
    xmin: str = ""


@dataclass
class _Write:
    row: _Row
    plaintext: bytes
    new_value: bytes | None  # None: only the index changes
    key_version: int | None
    index: bytes | None


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
    compiled = text(sql).compile(dialect=conn.dialect)
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
    prep = conn.dialect.identifier_preparer
    return ".".join(prep.quote(part) for part in name.split("."))


class ColumnJob:
    """Encrypts (``mode="encrypt"``) or re-encrypts (``mode="reencrypt"``) one column.

    Args:
        engine: A PostgreSQL engine.
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
    """

    def __init__(
        self,
        engine: Engine,
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
        with self.engine.begin() as conn:
            # Concurrent workers would race on CREATE ... IF NOT EXISTS (catalog unique index).
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('glc_job_tables'))"))
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {_quote(conn, self.state_schema)}"))
            for statement in statements("jobs", "postgresql", schema=self.state_schema):
                conn.execute(text(statement))

    def reset(self) -> None:
        """Forgets every run of this job (ranges and checkpoints; a later run starts over)."""
        self.ensure_tables()
        with self.engine.begin() as conn:
            n = self._names(conn)
            conn.execute(
                text(f"DELETE FROM {n['ranges']} WHERE job = :b OR starts_with(job, :p)"),
                {"b": self.job_base, "p": self.job_base + "@"},
            )

    def _plan(self) -> None:
        with self.engine.begin() as conn:
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
        with self.engine.begin() as conn:
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
        with self.engine.connect() as conn:
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

    # -- classification ------------------------------------------------------------------

    def _aad(self, row: _Row) -> bytes:
        s = self.spec
        if s.bind_row:
            return row_aad(s.table, s.column, row.pk, row.tenant)
        return location_aad(s.table, s.column)

    def _plan_rows(
        self, rows: Sequence[_Row], report: JobReport
    ) -> tuple[list[_Write], list[tuple[_Row, str, int | None]]]:
        """Decides per row: skip, write (encrypt / re-encrypt / re-index) or quarantine."""
        svc = self.service
        writes: list[_Write] = []
        bad: list[tuple[_Row, str, int | None]] = []
        to_encrypt: list[tuple[_Row, bytes]] = []
        # The version byte of an index value is public (like an envelope's key version).
        wanted_kv = self._target_index_version or 0
        for row in rows:
            value = row.value
            if value is None:
                report.skipped += 1
                continue
            ctx = self._contexts.get(row.tenant)
            if not is_envelope(value):
                if self.forbid_plaintext:
                    bad.append((row, "plaintext in phase 2", None))
                    continue
                if self.spec.kind == "str":
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        bad.append((row, "plaintext is not UTF-8", None))
                        continue
                to_encrypt.append((row, value))
                continue
            try:
                version = parse_envelope(value).key_version
            except GreenlangCryptoError as exc:
                bad.append((row, f"malformed envelope ({type(exc).__name__})", None))
                continue
            needs_key = self.mode == "reencrypt" and version < self._target_version
            idx_stale = self._index is not None and (
                row.index is None
                or (self.mode == "reencrypt" and _version_byte(row.index) != wanted_kv)
            )
            if not needs_key and not idx_stale:
                report.skipped += 1
                continue
            try:
                plaintext = svc.decrypt(value, ctx, associated_data=self._aad(row))
            except GreenlangCryptoError as exc:
                # The error type tells operators a missing or retired key version from a
                # failed tag, using only the key version in the public header.
                bad.append((row, type(exc).__name__, version))
                continue
            new_value = (
                svc.encrypt(plaintext, ctx, associated_data=self._aad(row)) if needs_key else None
            )
            writes.append(
                _Write(
                    row,
                    plaintext,
                    new_value,
                    self._target_version if needs_key else version,
                    self._index_of(plaintext, row),
                )
            )
        # Plaintext rows are encrypted in one batch call per context.
        by_tenant: dict[str, list[tuple[_Row, bytes]]] = {}
        for row, pt in to_encrypt:
            by_tenant.setdefault(row.tenant, []).append((row, pt))
        for tenant, items in by_tenant.items():
            ctx = self._contexts.get(tenant)
            sealed = svc.encrypt_batch(
                [pt for _, pt in items], ctx, associated_data=[self._aad(r) for r, _ in items]
            )
            for (row, pt), env in zip(items, sealed, strict=True):
                writes.append(_Write(row, pt, env, self._target_version, self._index_of(pt, row)))
        return writes, bad

    def _index_of(self, plaintext: bytes, row: _Row) -> bytes | None:
        if self._index is None:
            return None
        value: str | bytes = plaintext.decode("utf-8") if self.spec.kind == "str" else plaintext
        return bytes(
            self._index.compute(value, tenant_id=row.tenant, version=self._target_index_version)
        )

    # -- batches -------------------------------------------------------------------------

    def _select(
        self, conn: Connection, where: str, params: dict[str, Any], *, limit: bool = False
    ) -> list[_Row]:
        n = self._names(conn)
        tenant = f"t.{n['tenant']}" if self.spec.tenant_column else "NULL"
        index = f"t.{n['idx']}" if self.spec.index_column else "NULL"
        sql = (
            f"SELECT t.{n['pk']}, t.{n['pk']}::text, t.{n['col']}, {tenant}, {index}, "
            f"t.xmin::text FROM {n['t']} AS t WHERE {where} ORDER BY t.{n['pk']}"
        )
        if limit:
            sql += f" LIMIT {int(self.batch_size)}"
        fixed = self.spec.tenant_id
        return [
            _Row(
                pk,
                pk_text,
                None if value is None else bytes(value),
                fixed if fixed is not None else str(tenant_value),
                None if index_value is None else bytes(index_value),
                str(xmin),
            )
            for pk, pk_text, value, tenant_value, index_value, xmin in _value_rows(
                conn, sql, params
            )
        ]

    def _write(self, conn: Connection, writes: Sequence[_Write]) -> list[_Write]:
        """CAS-updates ``writes``; verifies what was written; returns the rows that lost."""
        if not writes:
            return []
        n = self._names(conn)
        pk_type = self._pk_sql_type(conn)
        params: dict[str, Any] = {}
        values = []
        for i, w in enumerate(writes):
            params[f"p{i}"] = w.row.pk_text
            # Compare on the row version (xmin), never on the old value: in phase 1 that is
            # the plaintext, and bound values end up in statement logs and exceptions.
            params[f"o{i}"] = w.row.xmin
            params[f"k{i}"] = w.key_version
            params[f"x{i}"] = w.index
            if w.new_value is not None:
                params[f"n{i}"] = w.new_value
                new = f"CAST(:n{i} AS bytea)"
            else:
                new = "NULL"  # only the index changes; the column keeps its value
            values.append(
                f"(CAST(:p{i} AS {pk_type}), CAST(:o{i} AS xid), {new}::bytea, "
                f"CAST(:k{i} AS integer), CAST(:x{i} AS bytea))"
            )
        sets = [f"{n['col']} = COALESCE(v.new_value, t.{n['col']})"]
        if self.spec.version_column:
            sets.append(f"{n['ver']} = v.key_version")
        if self.spec.index_column:
            sets.append(f"{n['idx']} = v.idx")
        sql = (
            f"UPDATE {n['t']} AS t SET {', '.join(sets)} "
            f"FROM (VALUES {', '.join(values)}) AS v(pk, old, new_value, key_version, idx) "
            f"WHERE t.{n['pk']} = v.pk AND t.xmin = v.old "
            f"RETURNING t.{n['pk']}::text"
        )
        # The UPDATE returns keys only: it runs through SQLAlchemy (its events, its error
        # handling), and whatever it returns may reach the engine's DEBUG log. The values
        # it wrote are read back on the DBAPI cursor, in the same transaction (the rows are
        # locked by the UPDATE until the batch commits).
        done = {str(pk_text) for (pk_text,) in conn.execute(text(sql), params)}
        if not done:
            return list(writes)
        returned_index = f"t.{n['idx']}" if self.spec.index_column else "NULL"
        stored_rows = _value_rows(
            conn,
            f"SELECT t.{n['pk']}::text, t.{n['col']}, {returned_index} FROM {n['t']} AS t "
            f"WHERE t.{n['pk']} = ANY(CAST(:pks AS {pk_type}[]))",
            {"pks": sorted(done)},
        )
        by_pk = {w.row.pk_text: w for w in writes}
        verified: set[str] = set()
        for pk_text, stored, index in stored_rows:
            w = by_pk[pk_text]
            # Verify after write, before the batch commits: what the database now holds
            # decrypts to the plaintext.
            ctx = self._contexts.get(w.row.tenant)
            back = self.service.decrypt(bytes(stored), ctx, associated_data=self._aad(w.row))
            if not hmac.compare_digest(back, w.plaintext):
                raise KeyStateError(f"verification failed for row {pk_text}; batch rolled back")
            if w.index is not None and not hmac.compare_digest(bytes(index), w.index):
                raise KeyStateError(f"index verification failed for row {pk_text}")
            verified.add(pk_text)
        if verified != done:
            raise KeyStateError("rows written by the batch could not be read back; rolled back")
        return [w for w in writes if w.row.pk_text not in done]

    def _quarantine(
        self, conn: Connection, bad: Sequence[tuple[_Row, str, int | None]], report: JobReport
    ) -> None:
        n = self._names(conn)
        for row, reason, version in bad:
            conn.execute(
                text(
                    f"INSERT INTO {n['quarantine']} "
                    "(job, table_name, column_name, pk, reason, key_version) "
                    "VALUES (:j, :t, :c, :pk, :r, :v) ON CONFLICT (job, pk) DO UPDATE SET "
                    "reason = EXCLUDED.reason, key_version = EXCLUDED.key_version, "
                    "detected_at = now()"
                ),
                {
                    "j": self.job_name,
                    "t": self.spec.table,
                    "c": self.spec.column,
                    "pk": row.pk_text,
                    "r": reason,
                    "v": version,
                },
            )
            report.quarantined.append((row.pk_text, reason, version))
            _log.warning(
                "quarantined %s.%s pk=%s: %s (key version %s)",
                self.spec.table,
                self.spec.column,
                row.pk_text,
                reason,
                version,
            )

    def _batch(self, range_id: int, hi: str | None, report: JobReport) -> tuple[bool, int]:
        """One transaction: renew the lease, read, write, verify, quarantine, checkpoint.

        Returns:
            Whether the range is finished, and the rows read.

        Raises:
            _LeaseLostError: Another worker holds the range now (nothing was written).
        """
        with self.engine.begin() as conn:
            n = self._names(conn)
            # Renewing first both proves this worker still owns the range and locks its row
            # until the batch commits; the checkpoint comes from the table, so a range taken
            # back resumes where its last committed batch ended.
            owned = conn.execute(
                text(
                    f"UPDATE {n['ranges']} SET lease_until = clock_timestamp() + "
                    "make_interval(secs => :lease) WHERE job = :j AND range_id = :i "
                    "AND owner = :w AND state = 'running' RETURNING COALESCE(last_pk, lo)"
                ),
                {"lease": self.lease_seconds, "j": self.job_name, "i": range_id, "w": self.worker},
            ).first()
            if owned is None:
                raise _LeaseLostError(range_id)
            last: str | None = owned[0]
            pk_type = self._pk_sql_type(conn)
            cond = ["TRUE"]
            params: dict[str, Any] = {}
            if last is not None:
                cond.append(f"t.{n['pk']} > CAST(:last AS {pk_type})")
                params["last"] = last
            if hi is not None:
                cond.append(f"t.{n['pk']} <= CAST(:hi AS {pk_type})")
                params["hi"] = hi
            rows = self._select(conn, " AND ".join(cond), params, limit=True)
            local = JobReport(self.job_name)
            if rows:
                writes, bad = self._plan_rows(rows, local)
                lost = self._write(conn, writes)
                # Every CAS round counts the rows it really changed, so the total is exact
                # however many rounds the application's own writes force.
                local.written += len(writes) - len(lost)
                for _ in range(3):
                    if not lost:
                        break
                    # The application changed these rows after they were read: re-read and
                    # decide again on their current values (never overwrite the new value).
                    local.contended += len(lost)
                    fresh = self._select(
                        conn,
                        f"t.{n['pk']} = ANY(CAST(:pks AS {pk_type}[]))",
                        {"pks": [w.row.pk_text for w in lost]},
                    )
                    writes, more_bad = self._plan_rows(fresh, local)
                    bad.extend(more_bad)
                    lost = self._write(conn, writes)
                    local.written += len(writes) - len(lost)
                for w in lost:
                    bad.append((w.row, "concurrent updates (retry the job)", w.key_version))
                self._quarantine(conn, bad, local)
            finished = len(rows) < self.batch_size
            conn.execute(
                text(
                    f"UPDATE {n['ranges']} SET last_pk = :last, processed = processed + :n, "
                    "state = :state, lease_until = clock_timestamp() + "
                    "make_interval(secs => :lease) WHERE job = :j AND range_id = :i"
                ),
                {
                    "last": rows[-1].pk_text if rows else last,
                    "n": len(rows),
                    "state": "done" if finished else "running",
                    "lease": self.lease_seconds,
                    "j": self.job_name,
                    "i": range_id,
                },
            )
        # Only a committed batch counts.
        report.scanned += len(rows)
        report.written += local.written
        report.skipped += local.skipped
        report.contended += local.contended
        report.quarantined.extend(local.quarantined)
        return finished, len(rows)

    def _remaining(self) -> int:
        """Rows not yet read by this run (an estimate for progress; the total is counted)."""
        with self.engine.connect() as conn:
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
        started = time.perf_counter()
        self.last_report = None
        self._retrying(None, self.ensure_tables)
        self._retrying(None, self._plan)
        report = JobReport(self.job_name)
        self.last_report = report
        try:
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

    def _release(self) -> None:
        """Gives this worker's unfinished ranges back at once (after a failure)."""
        try:
            with self.engine.begin() as conn:
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
        with self.engine.connect() as conn:
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
                    f"THEN ({version}) < :target ELSE false END))"
                )
                params["target"] = self._target_version
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

    def _work(self, report: JobReport) -> None:
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
            while not finished:
                try:
                    finished, count = self._retrying(report, self._batch, range_id, hi, report)
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
            with self.engine.connect() as conn:
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
        with self.engine.connect() as conn:
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


def _version_byte(value: bytes) -> int:
    return value[0] if value else 0


def enforce_ciphertext(engine: Engine, spec: ColumnSpec, *, add_constraint: bool = True) -> None:
    """Phase 2: fails if any value is not an envelope, then keeps new plaintext out.

    The check is ``col IS NULL OR get_byte(col, 0) = 250`` (``ENVELOPE_MAGIC``, 0xFA);
    with ``add_constraint`` it becomes a CHECK constraint ``glc_<column>_is_envelope``.

    Raises:
        PlaintextFoundError: Some rows hold plaintext (their count is in the message).
    """
    with engine.begin() as conn:
        t, col = _quote(conn, spec.table), _quote(conn, spec.column)
        magic = f"get_byte({col}, 0) = {ENVELOPE_MAGIC:d}"
        predicate = f"{col} IS NULL OR (octet_length({col}) > 0 AND {magic})"
        bad = conn.execute(text(f"SELECT count(*) FROM {t} WHERE NOT ({predicate})")).scalar()
        if bad:
            raise PlaintextFoundError(f"{bad} row(s) of {spec.table}.{spec.column} hold plaintext")
        if add_constraint:
            name = _quote(conn, f"glc_{spec.column}_is_envelope")
            exists = conn.execute(
                text(
                    "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(:t) AND conname = :n"
                ),
                {"t": t, "n": f"glc_{spec.column}_is_envelope"},
            ).first()
            if not exists:
                conn.execute(text(f"ALTER TABLE {t} ADD CONSTRAINT {name} CHECK ({predicate})"))


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
