"""Rotation on autopilot: one idempotent step that rotates, re-encrypts and retires when due.

:func:`run_autopilot_once` carries out the rotation policy of the service's configuration
(``rotation_period_seconds``, ``reencrypt_within_seconds``, ``retire_after_seconds``) over
the columns of a :class:`ColumnRegistry`, doing whatever is due and returning an
:class:`AutopilotReport`. It is safe to run every minute from a scheduler:

* **One runner across the fleet.** The step holds a PostgreSQL session advisory lock
  (``pg_try_advisory_lock`` on :data:`AUTOPILOT_LOCK_KEY`) on one connection for its whole
  duration. A second runner does not wait: it returns at once with status ``held`` and who
  holds the lock (the holder's ``application_name`` and backend pid). A runner killed at any
  point loses its session, and with it the lock. Before a key change the step checks that its
  session still holds the lock (after a database restart it does not) and stops if not.
* **Rotate** when the primary key version is older than ``rotation_period_seconds``
  (:meth:`EncryptionService.rotate`).
* **Re-encrypt** every registered column to the primary key and index versions with a
  :class:`~greenlang_crypto.sqlalchemy.migrate.ColumnJob` (``mode="reencrypt"``, worker name
  :data:`AUTOPILOT_WORKER`), within ``budget_seconds`` and optionally at most
  ``max_rows_per_second``. The job checkpoints every batch, so a step stopped by its budget,
  or killed, resumes at the next step exactly after the last committed batch. The budget is
  checked after each batch: a step may overrun it by one batch.
* **Retire** (:meth:`EncryptionService.retire_versions_below`) the versions that stopped
  being primary at least ``retire_after_seconds`` ago, and only when every registered column
  counts 0 rows under them (a dry run over the envelope headers), the registry has no
  encrypted column a job cannot take, and the service names no blocker (a live instance that
  still seals under them, unfinished job ranges). With ``delete_stored_deks`` (default) the
  stored DEKs of the retired versions are deleted as ``keys retire --delete-stored-deks``
  does.

Every action is recorded through ``audit`` when one is given (the CLI always gives its audit
log): ``key_rotate``, ``db_reencrypt`` and ``key_retire`` records with ``via: autopilot``,
intent first, so with the audit sink down nothing changes. The service also emits its own
``key_rotated``/``key_retired`` events to its observers either way.

Each step pushes its figures into :func:`greenlang_crypto.metrics.autopilot_state` (status,
rows per key version of every registered column, the next due dates; one aggregate per column
over the envelope headers), which the metrics collector of the same process exports.

Exit codes of ``greenlang-crypto db autopilot --once`` (:attr:`AutopilotReport.exit_code`):
0 done (nothing is due now) or held by another runner, 10 progressing (work remains for the
next step), 20 blocked (the reasons say why), 3 unavailable (the database or key store is
down; the CLI's code for outages).

Blind-index and branch keys follow their own periods. Past ``index_rotation_period_seconds``
the step adds a blind-index key version; the column jobs re-index every row under it (their
target is the primary index version), and past ``retire_after_seconds`` the old version is
retired once no registered column has a value under it and every live instance has loaded
the keyring that made the new one. Past ``branch_rotation_period_seconds`` each scope whose
active branch key is older gets a new one (:data:`BRANCH_SCOPES_PER_STEP` a step, oldest
first); data under the old branch keys stays readable and moves at the next data-key
re-encryption.

Due dates come from :meth:`EncryptionService.rotation_schedule` (the key store's own
timestamps), which ``keys status`` prints too. Each step's outcome (status and reasons) is
kept in the key store (:meth:`EncryptionService.record_autopilot_step`), so ``keys status``
on any instance shows why a due action is blocked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from greenlang_crypto._core import ENVELOPE_MAGIC
from greenlang_crypto.exceptions import (
    InvalidArgumentError,
    JobIncompleteError,
    KeyStateError,
    KeyStoreUnavailableError,
)
from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec, JobReport
from greenlang_crypto.sqlalchemy._job_sql import _quote
from greenlang_crypto.sqlalchemy._registry import ColumnRegistry
from greenlang_crypto.sqlalchemy.migrate import ColumnJob

if TYPE_CHECKING:
    from greenlang_crypto.audit import AuditLog
    from greenlang_crypto.engine.schedule import RotationSchedule
    from greenlang_crypto.service import EncryptionService

__all__ = [
    "AUTOPILOT_LOCK_KEY",
    "AUTOPILOT_WORKER",
    "EXIT_BLOCKED",
    "EXIT_DONE",
    "EXIT_PROGRESSING",
    "AutopilotReport",
    "ColumnRegistry",
    "run_autopilot_once",
]

#: The advisory lock key every autopilot runner takes (``b"glap"`` as an integer).
AUTOPILOT_LOCK_KEY = 0x676C6170
#: The worker name of the autopilot's column jobs: the next runner takes back at once the
#: ranges a killed runner held (only one runner acts at a time, so the name is never shared).
AUTOPILOT_WORKER = "glc-autopilot"

#: Branch scopes one step rotates at most (the rest wait for the next steps, oldest first).
BRANCH_SCOPES_PER_STEP = 200

#: Exit codes: nothing due (or another runner holds the lock), work remains, blocked.
EXIT_DONE = 0
EXIT_PROGRESSING = 10
EXIT_BLOCKED = 20

_STATUSES = ("done", "progressing", "blocked", "held")


@dataclass
class AutopilotReport:
    """What one autopilot step found and did.

    Attributes:
        status: ``done`` (nothing is due now), ``progressing`` (work remains for the next
            step), ``blocked`` (something prevents a due action; see :attr:`reasons`) or
            ``held`` (another runner holds the lock; see :attr:`holder`).
        reasons: Why the step is blocked or progressing, one sentence each.
        actions: What the step did, in order (``{"action": "rotate", ...}``).
        columns: Per ``table.column``: the re-encryption figures of this step and the rows
            still to do (``remaining``).
        primary_version: The primary key version after the step.
        min_decryption_version: The minimum decryption version after the step.
        next_rotation_at: When the next rotation is due (UNIX seconds; ``None``: no policy).
        next_retirement_at: When the next retirement is due, if a version (or an index key
            version) is waiting for it.
        next_index_rotation_at: When the blind-index key is due for rotation (``None``: no
            policy, or no index key yet).
        next_branch_rotation_at: When the oldest branch key is due for rotation.
        overdue: Deadlines of the policy that have passed (re-encryption behind schedule).
        notes: Facts that change nothing (a policy setting not acted on yet).
        holder: With status ``held``: who holds the lock (application name and pid).
        seconds: Wall time of the step.
    """

    status: str = "done"
    reasons: list[str] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    primary_version: int | None = None
    min_decryption_version: int | None = None
    next_rotation_at: float | None = None
    next_retirement_at: float | None = None
    next_index_rotation_at: float | None = None
    next_branch_rotation_at: float | None = None
    overdue: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    holder: str | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 done or held, 10 progressing, 20 blocked (see the module docstring)."""
        if self.status == "blocked":
            return EXIT_BLOCKED
        if self.status == "progressing":
            return EXIT_PROGRESSING
        return EXIT_DONE

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (names, counts and versions only; never a row value)."""
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "reasons": list(self.reasons),
            "actions": [dict(a) for a in self.actions],
            "columns": {k: dict(v) for k, v in self.columns.items()},
            "primary_version": self.primary_version,
            "min_decryption_version": self.min_decryption_version,
            "next_rotation_at": self.next_rotation_at,
            "next_retirement_at": self.next_retirement_at,
            "next_index_rotation_at": self.next_index_rotation_at,
            "next_branch_rotation_at": self.next_branch_rotation_at,
            "overdue": list(self.overdue),
            "notes": list(self.notes),
            "holder": self.holder,
            "seconds": round(self.seconds, 3),
        }


class _BudgetSpentError(Exception):
    """Raised from a job's progress callback once the step's time budget is spent."""


class _FleetLock:
    """The autopilot's session advisory lock, on a connection held for the step."""

    def __init__(self, engine: Engine, key: int) -> None:
        self.engine = engine
        self.key = key
        self.label = f"glc-autopilot {socket.gethostname()}:{os.getpid()}"[:63]
        self.conn: Connection | None = None
        self.acquired = False

    def __enter__(self) -> _FleetLock:
        try:
            conn = self.engine.connect()
        except DBAPIError as exc:
            raise KeyStoreUnavailableError(
                f"the autopilot cannot reach the database ({type(exc.orig).__name__})"
            ) from exc
        self.conn = conn
        try:
            # Autocommit: the session holds the lock, and no transaction stays open for the
            # step (an idle transaction would hold back vacuum on a busy database).
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(
                text("SELECT set_config('application_name', :n, false)"), {"n": self.label}
            )
            self.acquired = bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
            )
        except DBAPIError as exc:
            self._close()
            raise KeyStoreUnavailableError(
                f"the autopilot cannot take its lock ({type(exc.orig).__name__})"
            ) from exc
        return self

    def holder(self) -> str:
        """Who holds the lock: ``application_name (pid N)``, or ``unknown`` if it was freed."""
        assert self.conn is not None
        row = self.conn.execute(
            text(
                "SELECT a.application_name, l.pid FROM pg_locks l "
                "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 "
                "AND l.objid::bigint = :k AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) LIMIT 1"
            ),
            {"k": self.key},
        ).first()
        if row is None:
            return "unknown (released meanwhile)"
        return f"{row[0] or 'unnamed'} (pid {row[1]})"

    def check(self) -> None:
        """Raises unless this session still holds the lock (a restart of PostgreSQL drops it).

        Raises:
            KeyStoreUnavailableError: The lock or its connection is gone.
        """
        assert self.conn is not None
        try:
            held = self.conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
                    "AND locktype = 'advisory' AND granted AND classid = 0 "
                    "AND objid::bigint = :k AND objsubid = 1"
                ),
                {"k": self.key},
            ).scalar()
        except DBAPIError as exc:
            raise KeyStoreUnavailableError(
                "the autopilot lost its lock connection; another runner may act now"
            ) from exc
        if not held:
            raise KeyStoreUnavailableError("the autopilot no longer holds its lock")

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        with contextlib.suppress(DBAPIError):
            if self.acquired:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            conn.execute(text("RESET application_name"))
        with contextlib.suppress(DBAPIError):
            conn.close()

    def __exit__(self, *exc: object) -> None:
        self._close()


def _versions(versions: list[int]) -> str:
    return ", ".join(f"{v}" for v in sorted(versions))


def _audited(
    audit: AuditLog | None, action: str, **fields: Any
) -> contextlib.AbstractContextManager[dict[str, Any]]:
    if audit is None:
        return contextlib.nullcontext({})
    return audit.audited(action, **fields)


def run_autopilot_once(
    engine: Engine,
    service: EncryptionService,
    registry: ColumnRegistry,
    *,
    budget_seconds: float = 50.0,
    max_rows_per_second: float | None = None,
    clock: Callable[[], float] = time.time,
    audit: AuditLog | None = None,
    delete_stored_deks: bool = True,
    batch_size: int = 500,
    state_schema: str = "encryption",
    lock_key: int = AUTOPILOT_LOCK_KEY,
    cancel: threading.Event | None = None,
) -> AutopilotReport:
    """Does whatever the rotation policy says is due now, then reports (see the module doc).

    Args:
        engine: The application's PostgreSQL engine (the registered columns' database).
        service: The EncryptionService; its ``config`` holds the policy.
        registry: The columns to re-encrypt and count before a retirement.
        budget_seconds: Time for the step's re-encryption (checked after every batch).
        max_rows_per_second: Cap on the rows re-encryption reads per second (``None``: none),
            so the step yields to application traffic.
        clock: The wall clock in UNIX seconds the policy's ages are measured with (tests
            inject one that jumps ahead).
        audit: The audit log every action is recorded in (intent first: with its sink down
            nothing changes). ``None``: only the service's own events.
        delete_stored_deks: On retirement, also delete the retired versions' stored DEKs
            (needed whenever stored DEKs exist; every registered column counted 0 rows).
        batch_size: Rows per re-encryption batch.
        state_schema: Schema of the job tables.
        lock_key: The advisory lock key (tests use their own).
        cancel: Once set, re-encryption stops at its next batch boundary as if the budget
            were spent (a background thread being stopped).

    Returns:
        The report; its :attr:`~AutopilotReport.exit_code` is the CLI's.

    Raises:
        InvalidArgumentError: A bad argument (nothing was done).
        KeyStoreUnavailableError: The database or key store is unreachable, or the lock was
            lost in the middle of the step (what was done is committed; rerun later).
        AuditSinkUnavailableError: The audit sink refused an intent record (that action and
            the rest of the step were not done).
    """
    if engine.dialect.name != "postgresql":
        raise InvalidArgumentError("the autopilot runs on PostgreSQL")
    if not budget_seconds > 0:
        raise InvalidArgumentError("budget_seconds must be positive")
    if max_rows_per_second is not None and not max_rows_per_second > 0:
        raise InvalidArgumentError("max_rows_per_second must be positive (or None)")
    from greenlang_crypto.metrics import autopilot_state

    started = time.monotonic()
    deadline = started + budget_seconds
    report = AutopilotReport()
    step: _Step | None = None
    try:
        with _FleetLock(engine, lock_key) as lock:
            if not lock.acquired:
                report.status = "held"
                report.holder = lock.holder()
                report.reasons.append(f"held by another runner: {report.holder}")
            else:
                step = _Step(
                    engine, service, registry, report, lock, clock, audit, deadline,
                    max_rows_per_second, delete_stored_deks, batch_size, state_schema,
                    cancel or threading.Event(),
                )  # fmt: skip
                step.run()
    except BaseException:
        # The figures of a step that stopped part-way are not pushed: they may be half new.
        autopilot_state().push("failed", finished_at=time.time())
        raise
    report.seconds = time.monotonic() - started
    if step is None:
        # Held: another runner acts and exports the fleet's figures. Ours would be from our
        # last own step and age into false alarms (a rotation "overdue" that it did).
        autopilot_state().push(
            report.status, finished_at=time.time(), rows={}, next_actions={}, behind=0
        )
        return report
    # Due dates are pushed on the real clock (scrapes count down on it), keeping the distance
    # the policy's clock gives them.
    shift = time.time() - clock()
    due = {
        "rotate": report.next_rotation_at,
        "retire": report.next_retirement_at,
        "reencrypt": step.reencrypt_due_at,
        "index_rotate": report.next_index_rotation_at,
        "branch_rotate": report.next_branch_rotation_at,
    }
    autopilot_state().push(
        report.status,
        finished_at=time.time(),
        rows=step.rows_by_version,
        next_actions={k: None if v is None else v + shift for k, v in due.items()},
        behind=len(report.overdue),
    )
    return report


class _Step:
    """One autopilot step under the lock (its phases share the report and the budget)."""

    def __init__(
        self,
        engine: Engine,
        service: EncryptionService,
        registry: ColumnRegistry,
        report: AutopilotReport,
        lock: _FleetLock,
        clock: Callable[[], float],
        audit: AuditLog | None,
        deadline: float,
        max_rows_per_second: float | None,
        delete_stored_deks: bool,
        batch_size: int,
        state_schema: str,
        cancel: threading.Event,
    ) -> None:
        self.engine = engine
        self.cancel = cancel
        self.service = service
        self.registry = registry
        self.report = report
        self.lock = lock
        self.clock = clock
        self.audit = audit
        self.deadline = deadline
        self.max_rps = max_rows_per_second
        self.delete_stored_deks = delete_stored_deks
        self.batch_size = batch_size
        self.state_schema = state_schema
        self.config = service.config
        self.blocked: list[str] = []
        self.pending: list[str] = []
        #: Rows per (table, column, key version) counted at the end of the step (metrics);
        #: ``None`` when the count could not be made.
        self.rows_by_version: dict[tuple[str, str, str], int] | None = {}
        #: When the re-encryption to the primary is due, while rows remain to move.
        self.reencrypt_due_at: float | None = None
        #: The step's row census (``_census``), taken once after the re-encryption.
        self._census_cache: dict[ColumnSpec, dict[tuple[int | None, int | None], int]] | None
        self._census_cache = None

    def run(self) -> None:
        self.service.refresh_keyring()
        # A stopping thread (cancel set) starts no new key change; what is committed stays.
        if not self.cancel.is_set():
            self._rotate_if_due()
            self._rotate_index_if_due()
            self._rotate_branches_if_due()
        columns_clear = self._reencrypt()
        if not self.cancel.is_set():
            self._retire_if_due(columns_clear)
            self._retire_index_if_due(columns_clear)
        self._count_versions()
        report = self.report
        report.primary_version = self.service.primary_version
        report.min_decryption_version = self.service.min_decryption_version
        if self.blocked:
            report.status = "blocked"
        elif self.pending:
            report.status = "progressing"
        else:
            report.status = "done"
        report.reasons = self.blocked + self.pending
        self._record()

    def _record(self) -> None:
        """Keeps the outcome in the key store, where ``keys status`` shows it to anyone."""
        try:
            self.service.record_autopilot_step(
                self.report.status, self.report.reasons, self.lock.label
            )
        except KeyStoreUnavailableError:
            # The step's actions are committed; only the note for `keys status` is missing.
            self.report.notes.append("the outcome was not recorded: the key store is down")

    def _schedule(self) -> RotationSchedule:
        return self.service.rotation_schedule(now=self.clock())

    # -- rotation --------------------------------------------------------------------------

    def _rotate_if_due(self) -> None:
        period = self.config.rotation_period_seconds
        if period is None:
            return
        due = self._schedule().next_rotation_at
        assert due is not None
        if self.clock() >= due:
            self.lock.check()
            old = self.service.primary_version
            with _audited(
                self.audit,
                "key_rotate",
                key_version=old,
                details={"old_version": old, "via": "autopilot"},
            ) as outcome:
                result = self.service.rotate()
                outcome["new_version"] = result.new_version
            self.report.actions.append(
                {"action": "rotate", "old_version": old, "new_version": result.new_version}
            )
            due = self._schedule().next_rotation_at
        self.report.next_rotation_at = due

    def _rotate_index_if_due(self) -> None:
        """A new blind-index key once the primary one is older than its period.

        The column jobs then re-index every row under it (their target is the primary index
        version), and :meth:`_retire_index_if_due` retires the old one once none is left.
        """
        if self.config.index_rotation_period_seconds is None:
            return
        schedule = self._schedule()
        due = schedule.next_index_rotation_at
        # No index key yet: the first blind index creates one, fresh.
        if due is None or self.clock() < due:
            self.report.next_index_rotation_at = due
            return
        self.lock.check()
        old = schedule.index_primary_version
        with _audited(
            self.audit,
            "index_key_rotate",
            key_version=old,
            details={"old_version": old, "via": "autopilot"},
        ) as outcome:
            new = self.service.rotate_index_key()
            outcome["new_version"] = new
        self.report.actions.append(
            {"action": "index-rotate", "old_version": old, "new_version": new}
        )
        self.report.next_index_rotation_at = self._schedule().next_index_rotation_at

    def _rotate_branches_if_due(self) -> None:
        """New branch keys for the scopes whose active one is older than its period.

        At most :data:`BRANCH_SCOPES_PER_STEP` scopes a step, oldest first: a fleet with many
        tenants catches up over several steps, each short.
        """
        period = self.config.branch_rotation_period_seconds
        if period is None:
            return
        due = self._schedule().next_branch_rotation_at
        if due is None or self.clock() < due:
            self.report.next_branch_rotation_at = due
            return
        self.lock.check()
        with _audited(
            self.audit, "branch_key_rotate", details={"scope": "*", "via": "autopilot"}
        ) as outcome:
            scopes = self.service.rotate_stale_branch_keys(
                self.clock() - period, limit=BRANCH_SCOPES_PER_STEP
            )
            outcome["scopes"] = len(scopes)
        self.report.actions.append({"action": "branch-rotate", "scopes": len(scopes)})
        left = self._schedule().next_branch_rotation_at
        self.report.next_branch_rotation_at = left
        if left is not None and self.clock() >= left:
            self.pending.append("more branch keys are due for rotation (next step)")

    # -- re-encryption ---------------------------------------------------------------------

    def _pacer(self) -> Callable[[int, int], None]:
        """A job progress callback that caps the row rate and stops at the deadline."""
        began = time.monotonic()

        def progress(processed: int, remaining: int) -> None:
            now = time.monotonic()
            if self.max_rps is not None:
                # Sleep until `processed` rows fit the rate, but never past the deadline.
                wait = began + processed / self.max_rps - now
                if wait > 0:
                    self.cancel.wait(min(wait, max(0.0, self.deadline - now)))
                    now = time.monotonic()
            if remaining and (now >= self.deadline or self.cancel.is_set()):
                raise _BudgetSpentError

        return progress

    def _reencrypt(self) -> bool:
        """Advances every column; returns whether all of them have nothing left to do."""
        clear = True
        for spec in self.registry:
            name = f"{spec.table}.{spec.column}"
            if not self._reencrypt_column(spec, name):
                clear = False
        if not clear:
            self._check_schedule()
        return clear

    def _job(self, spec: ColumnSpec, job_name: str | None = None) -> ColumnJob:
        return ColumnJob(
            self.engine,
            self.service,
            spec,
            mode="reencrypt",
            job_name=job_name,
            worker=AUTOPILOT_WORKER,
            batch_size=self.batch_size,
            state_schema=self.state_schema,
            # Ranges of a manual `db reencrypt` still running are waited for at the next step.
            wait_leases=0.0,
            progress=self._pacer(),
        )

    def _open_runs(self, job: ColumnJob) -> list[str]:
        """Job names (without run id) of this column's re-encryption runs not finished yet.

        Left by a step stopped by its budget, a killed runner, or a manual ``db reencrypt``.
        """
        with self.engine.connect() as conn:
            table = conn.execute(
                text("SELECT to_regclass(:t)::text"),
                {"t": f"{self.state_schema}.glc_job_ranges"},
            ).scalar()
            if table is None:
                return []
            prefix = f"reencrypt:{job.spec.table}.{job.spec.column}:v"
            # `table` is to_regclass's own rendering of a schema validated by the job.
            found = conn.execute(
                text(
                    f"SELECT DISTINCT split_part(job, '@', 1) FROM {table} "  # noqa: S608
                    "WHERE starts_with(job, :p) AND state <> 'done'"
                ),
                {"p": prefix},
            ).scalars()
            return sorted(str(base) for base in found)

    def _forget_stale_runs(self, job: ColumnJob, open_runs: list[str]) -> None:
        """Drops unfinished runs toward an older primary: their target is moot after a rotation.

        Their ranges would otherwise count as unfinished jobs and block every retirement.
        """
        for base in open_runs:
            if base != job.job_base:
                self._job(job.spec, job_name=base).reset()
                self.report.actions.append({"action": "forget-stale-run", "job": base})

    def _reencrypt_column(self, spec: ColumnSpec, name: str) -> bool:
        if self.cancel.is_set():
            self.pending.append(f"{name}: not started (the autopilot is stopping)")
            return False
        # Writes are compare-and-swap and safe beside any writer, but two runners sharing the
        # worker name would share ranges: after a database restart dropped the lock, stop.
        self.lock.check()
        if not self._table_exists(spec):
            # Models ahead of the database (a migration not applied yet): the column has no
            # rows to move, but nothing may be retired on a count that could not be made.
            self.blocked.append(
                f"{name}: table {spec.table} does not exist (apply the application's "
                "migrations, or give models that match the database)"
            )
            return False
        job = self._job(spec)
        remaining = job.count_remaining()
        figures: dict[str, Any] = {"remaining": remaining}
        self.report.columns[name] = figures
        open_runs = self._open_runs(job)
        self._forget_stale_runs(job, open_runs)
        if remaining == 0 and job.job_base not in open_runs:
            return True
        if time.monotonic() >= self.deadline:
            self.pending.append(f"{name}: {remaining} row(s) to re-encrypt (budget spent)")
            return False
        stopped: str | None = None
        with _audited(
            self.audit,
            "db_reencrypt",
            details={"table": spec.table, "column": spec.column, "via": "autopilot"},
        ) as outcome:
            try:
                result: JobReport | None = job.run()
            except _BudgetSpentError:
                result, stopped = job.last_report, "budget spent"
            except JobIncompleteError:
                result, stopped = job.last_report, "other workers hold ranges of its job"
            if result is not None:
                summary = {k: v for k, v in result.summary().items() if k != "job"}
                outcome.update(summary)
                outcome["job"] = result.job
                figures.update(summary)
            if stopped is not None:
                outcome["stopped"] = stopped
        if stopped is not None or result is None:
            figures["remaining"] = job.count_remaining()
            self.report.actions.append({"action": "reencrypt", "column": name, **figures})
            self.pending.append(
                f"{name}: {figures['remaining']} row(s) to re-encrypt ({stopped or 'stopped'})"
            )
            return False
        self.report.actions.append({"action": "reencrypt", "column": name, **figures})
        # The whole run's entries: a run resumed over several steps quarantined some rows
        # in earlier ones.
        quarantined = job.quarantined() if result.remaining else []
        if quarantined:
            reasons = sorted({reason for _, reason, _ in quarantined})
            self.blocked.append(
                f"{name}: {len(quarantined)} row(s) quarantined "
                f"({', '.join(reasons)}); see `db status`, fix or remove them"
            )
            return False
        if result.remaining:
            self.pending.append(f"{name}: {result.remaining} row(s) to re-encrypt")
            return False
        return True

    def _table_exists(self, spec: ColumnSpec) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                text("SELECT to_regclass(:t)"), {"t": _quote(conn, spec.table)}
            ).scalar()
        return found is not None

    def _check_schedule(self) -> None:
        within = self.config.reencrypt_within_seconds
        if within is None:
            return
        since = self._schedule().primary_created_at
        self.reencrypt_due_at = since + within
        if self.clock() >= since + within:
            self.report.overdue.append(
                f"re-encryption to v{self.service.primary_version} is behind schedule: "
                f"due {within:g} s after the rotation"
            )

    # -- retirement ------------------------------------------------------------------------

    def _finish_retirement(self) -> None:
        """Deletes the keys a retirement cut off midway left (the minimum rose, they stayed)."""
        service = self.service
        if not self.delete_stored_deks or not service.retired_keys_left():
            return
        self.lock.check()
        below = service.min_decryption_version
        with _audited(
            self.audit,
            "key_retire",
            key_version=below,
            details={"min_version": below, "delete_stored_deks": True, "via": "autopilot"},
        ):
            service.retire_versions_below(below, delete_stored_deks=True)
        self.report.actions.append({"action": "retire-finish", "below": below})

    def _retire_if_due(self, columns_clear: bool) -> None:
        self._finish_retirement()
        grace = self.config.retire_after_seconds
        if grace is None:
            return
        service = self.service
        primary, floor = service.primary_version, service.min_decryption_version
        rotated = {
            v.version: v.rotated_at
            for v in service.versions()
            if floor <= v.version < primary and v.rotated_at is not None
        }
        if not rotated:
            return
        now = self.clock()
        ready = [v for v, at in rotated.items() if at + grace <= now]
        waiting = [at + grace for v, at in rotated.items() if at + grace > now]
        self.report.next_retirement_at = min(waiting) if waiting else None
        if not ready:
            return
        below = max(ready) + 1
        blockers = [
            f"{name} is encrypted but the autopilot cannot re-encrypt it: {why}"
            for name, why in sorted(self.registry.unsupported.items())
        ]
        if columns_clear:
            blockers += self._rows_below(below)
        if not columns_clear and not blockers:
            self.pending.append(f"retiring versions below {below} waits for re-encryption")
            return
        blockers += service.retirement_blockers(below)
        if blockers:
            self.blocked += [f"retiring versions below {below} is blocked: {b}" for b in blockers]
            return
        self.lock.check()
        try:
            with _audited(
                self.audit,
                "key_retire",
                key_version=below,
                details={
                    "min_version": below,
                    "delete_stored_deks": self.delete_stored_deks,
                    "via": "autopilot",
                },
            ):
                service.retire_versions_below(below, delete_stored_deks=self.delete_stored_deks)
        except KeyStateError as exc:
            self.blocked.append(f"retiring versions below {below} is blocked: {exc}")
            return
        self.report.actions.append({"action": "retire", "below": below})
        self.report.next_retirement_at = None

    def _retire_index_if_due(self, columns_clear: bool) -> None:
        """Retires old blind-index keys once nothing needs them.

        That is: past the grace, no registered row indexed under them, and every live
        instance has loaded the newer one (so none writes under them any more).
        """
        grace = self.config.retire_after_seconds
        if grace is None:
            return
        now = self.clock()
        retirements = self._schedule().index_retirements
        ready = [v for v, at in retirements if at is not None and at <= now]
        waiting = [at for v, at in retirements if at is not None and at > now]
        if waiting:
            self.report.next_retirement_at = min(
                [*waiting, *filter(None, [self.report.next_retirement_at])]
            )
        if not ready:
            return
        if not columns_clear:
            self.pending.append(
                f"retiring index key version(s) {_versions(ready)} waits for re-indexing"
            )
            return
        # A column the autopilot cannot re-index still holds values under the old key: its
        # lookups would find nothing once the key is retired.
        blockers = [
            f"{name} is encrypted but the autopilot cannot re-index it: {why}"
            for name, why in sorted(self.registry.unsupported.items())
        ]
        blockers += self._index_rows_under(ready)
        service = self.service
        # A job built before the index rotation (a phase-1 encryption running by hand) keeps
        # indexing under the old key until it finishes.
        blockers += service.retirement_blockers(service.min_decryption_version)
        epoch = service.keyring_epoch
        blockers += [
            f"instance {i.host}:{i.pid} has not loaded the current keyring (epoch {i.epoch} "
            f"< {epoch})"
            for i in service.live_instances()
            if i.instance_id != service.instance_id and i.epoch < epoch
        ]
        if blockers:
            self.blocked += [
                f"retiring index key version(s) {_versions(ready)} is blocked: {b}"
                for b in blockers
            ]
            return
        self.lock.check()
        for version in ready:
            with _audited(
                self.audit,
                "index_key_retire",
                key_version=version,
                details={"version": version, "via": "autopilot"},
            ):
                service.retire_index_key(version)
            self.report.actions.append({"action": "index-retire", "version": version})

    def _index_rows_under(self, versions: list[int]) -> list[str]:
        out = []
        for spec, counts in self._census().items():
            if spec.index_column is None:
                continue
            under = sum(n for (_, iv), n in counts.items() if iv in versions)
            if under:
                out.append(f"{spec.table}.{spec.index_column} has {under} value(s) under them")
        return out

    def _rows_below(self, below: int) -> list[str]:
        """What every registered column still holds under versions below ``below``."""
        out = []
        for spec, counts in self._census().items():
            under = sum(n for (kv, _), n in counts.items() if kv is not None and kv < below)
            other = sum(n for (kv, _), n in counts.items() if kv is None)
            parts = []
            if under:
                parts.append(f"{under} row(s) under versions below {below}")
            if other:
                parts.append(f"{other} value(s) that are not envelopes (plaintext or damaged)")
            if parts:
                out.append(f"{spec.table}.{spec.column} has " + ", ".join(parts))
        return out

    def _census(self) -> dict[ColumnSpec, dict[tuple[int | None, int | None], int]]:
        """Rows of every registered column per (key version, index version), counted in SQL.

        One aggregate per column over the public header bytes (an envelope's magic byte and
        key version, an index value's version byte), taken once per step after the
        re-encryption and shared by the retirement checks and the metrics: only names,
        versions and counts leave the database. ``None`` as key version: a value that is not
        an envelope; as index version: no index value (or no index column).
        """
        if self._census_cache is not None:
            return self._census_cache
        out: dict[ColumnSpec, dict[tuple[int | None, int | None], int]] = {}
        magic = f"{ENVELOPE_MAGIC:d}"
        for spec in self.registry:
            with self.engine.connect() as conn:
                col = _quote(conn, spec.column)
                version = " | ".join(
                    f"(get_byte({col}, {i})::bigint << {8 * (7 - i)})" for i in range(4, 8)
                )
                index = "NULL"
                if spec.index_column is not None:
                    idx = _quote(conn, spec.index_column)
                    index = f"CASE WHEN octet_length({idx}) >= 1 THEN get_byte({idx}, 0) END"
                # Nested CASE: get_byte past the end of a short value is an error, and SQL
                # does not promise to evaluate AND left to right.
                found = conn.execute(
                    text(
                        f"SELECT CASE WHEN octet_length({col}) >= 8 THEN "  # noqa: S608
                        f"CASE WHEN get_byte({col}, 0) = {magic} THEN {version} END END, "
                        f"{index}, count(*) FROM {_quote(conn, spec.table)} "
                        f"WHERE {col} IS NOT NULL GROUP BY 1, 2"
                    )
                ).all()
            counts: dict[tuple[int | None, int | None], int] = {}
            for kv, iv, n in found:
                key = (None if kv is None else int(kv), None if iv is None else int(iv))
                counts[key] = counts.get(key, 0) + int(n)
            out[spec] = counts
        self._census_cache = out
        return out

    # -- figures ---------------------------------------------------------------------------

    def _count_versions(self) -> None:
        """Counts each registered column's rows per key version (one aggregate per column).

        Read from the envelope headers (bytes 4-7, big-endian) in SQL; only names, versions
        and counts leave the database. Feeds ``gl_encryption_column_rows``.
        """
        try:
            self.rows_by_version = self._counts()
        except DBAPIError as exc:
            # The step's actions are committed; a count for the metrics must not undo its
            # report. The metrics keep the previous figures.
            self.rows_by_version = None
            self.report.notes.append(
                f"rows per key version were not counted ({type(exc.orig).__name__})"
            )

    def _counts(self) -> dict[tuple[str, str, str], int]:
        out: dict[tuple[str, str, str], int] = {}
        for spec, counts in self._census().items():
            for (kv, _), n in counts.items():
                key = (spec.table, spec.column, "none" if kv is None else str(kv))
                out[key] = out.get(key, 0) + n
        return out
