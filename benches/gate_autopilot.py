"""Autopilot gate: the rotation autopilot's step against the job it runs, and beside the app.

1. **Throughput.** One autopilot step
   (:func:`~greenlang_crypto.sqlalchemy.autopilot.run_autopilot_once`, no rate cap, a budget
   it never reaches) moves every e-mail of a users-like table (the model of
   tests/integration/autopilot_proc.py: an encrypted e-mail and its blind index, ``N_ROWS``
   rows) from key version 1 to 2, against the job ``db reencrypt --model`` runs for the same
   column (:class:`~greenlang_crypto.sqlalchemy.migrate.ColumnJob`, ``mode="reencrypt"``,
   the same spec, the same batch size) on a fresh copy of the same table. The step is a real
   one: its policy has the retirement of version 1 due, so besides the re-encryption it
   takes its lock, counts the rows left (before and after), counts the column's rows per key
   and index version in SQL (0 rows under version 1; the same count feeds the metrics) and
   retires version 1, and all of that is timed. The issue's target is 1.1x.

   Each side of a round gets a fresh copy of the v1 table (made untimed, VACUUM and
   CHECKPOINT before either side), an empty job table, and its own
   :class:`~greenlang_crypto.service.EncryptionService` opened on its own copy of the key
   directory as it was after the rotation (so the retirement of one round does not reach the
   next, and both sides start with a cold DEK cache); the order of the sides alternates and
   the result is the median of the per-round ratios.

2. **The application beside the autopilot.** The application's writes (ORM transactions of
   one row each, inserts of new users and e-mail updates of random existing ones in turn, a
   new session per write, as web requests make them) while an autopilot step re-encrypts the
   same large table at ``max_rows_per_second=RATE`` in another process (the step runs from a
   scheduler, as ``db autopilot --once`` does), against the same writes with no step
   running. Each window writes for ``WINDOW`` seconds; what is compared is the mean time per
   write (the window's time over its writes): the step's batches come in bursts (a batch of
   500 rows every 0.25 s at 2,000 rows/s), so they reach the slowest writes, and the median
   write would not show them. The target is 1.2x.

   One step process serves the whole check: it loads once, then runs a step each time the
   parent asks (a file) until the parent interrupts it (SIGINT, as a stopped scheduler job
   is; the next step resumes after the last committed batch). The windows alternate: alone,
   beside a step, alone, beside a step, ..., and each window beside a step is compared with
   the mean of the windows alone just before and after it, so a drift over the three (a
   neighbour's build starting) cancels; the result is the median of those ratios. A window
   beside a step starts once the step has committed two batches (its counting scans are
   behind it) and fails the check if the step moved fewer than a third of the rows its rate
   allows meanwhile. Autovacuum is off on the table and a VACUUM runs after each step,
   untimed: autovacuum's runs, set off by the step's row versions, start when they start and
   would land on either kind of window.

Each check works in a PostgreSQL database of its own (its tables and job-state schema, with an
advisory lock key of its own as well), dropped afterwards. Needs ``GLC_PG_URL``; imported by
benches/gate.py (the service suite). Run it alone with::

    PYTHONPATH=. .venv/bin/python benches/gate_autopilot.py

``GLC_GATE_VERBOSE=1`` prints every round.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import BigInteger, create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from benches._measure import Ratio, ratio_of_rounds
from greenlang_crypto.sqlalchemy import EMAIL, BlindIndex, EncryptedString

Check = Callable[[], Ratio]

REPO = Path(__file__).resolve().parent.parent

#: Rows of the throughput check's table (one side of a round takes about a second here).
N_ROWS = 20_000
#: Rows per batch: the default of both ``db reencrypt`` and ``db autopilot``.
BATCH = 500
#: Interleaved rounds of the throughput check (each times both sides once).
ROUNDS = 11
NAME_STEP = (
    f"autopilot step re-encrypting {N_ROWS:,} rows (with its counts and the retirement) "
    "vs the job of `db reencrypt`"
)
TARGET_STEP = 1.1

#: The autopilot's rate cap in the write-latency check: a tenth or so of what the job moves
#: uncapped on this machine, a rate an operator would give a step beside live traffic.
RATE = 2_000
#: Rows of the write-latency check's table; it is rotated again when fewer remain to move
#: than a round's step could reach.
WRITE_TABLE_ROWS = 40_000
#: Seconds of application writes per window (a few hundred writes here).
WINDOW = 1.0
#: Windows beside a step (each between two windows without one). A window is one second of
#: a shared 2-core machine, and a neighbour's burst moves single ratios by 0.5x either way;
#: 21 of them keep the median within about 0.05x of itself from run to run.
WRITE_ROUNDS = 21
NAME_WRITES = (
    f"app writes, ORM, one row per commit, beside an autopilot step at {RATE:,} rows/s "
    "vs without (mean time per write)"
)
TARGET_WRITES = 1.2

TABLE = "gate_ap_people"
#: The steps' advisory lock key: not the library's default, so that these steps stay apart
#: from any real runner even if they shared a database (each check makes its own).
LOCK_KEY = 0x676C6762
#: How far the policy's clock is ahead in the throughput check: past the retirement's grace.
CLOCK_AHEAD = 3600.0
GRACE = 60.0

_current: dict[str, Any] = {}


def _model_service() -> Any:
    """The service of the model's column type: the one the current side or process uses."""
    return _current["service"]


class Base(DeclarativeBase):
    """The gate's application models."""


class Person(Base):
    """A users-like row: an encrypted e-mail with a blind index (fixed tenant)."""

    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    email: Mapped[str | None] = mapped_column(
        EncryptedString(_model_service, data_class="pii", tenant_id="acme"), nullable=True
    )
    email_idx: Mapped[bytes | None] = mapped_column(
        BlindIndex("email", normalizer=EMAIL), nullable=True
    )


def _verbose() -> bool:
    return bool(os.environ.get("GLC_GATE_VERBOSE"))


def _open_service(data_dir: Path, **policy: Any) -> Any:
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.service import EncryptionService

    return EncryptionService(EncryptionServiceConfig(data_dir=data_dir, **policy))


def _new_key_dir() -> Path:
    from greenlang_crypto.providers.local import LocalKeyProvider

    data_dir = Path(tempfile.mkdtemp(prefix="glc-gate-autopilot-"))
    LocalKeyProvider(data_dir).create_master_key()
    return data_dir


@contextlib.contextmanager
def _private_database(prefix: str) -> Iterator[str]:
    """A new database on the server of ``GLC_PG_URL`` (its URL), dropped afterwards."""
    url = os.environ["GLC_PG_URL"]
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            yield admin.url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        admin.dispose()


def _fill(engine: Engine, first: int, count: int) -> None:
    """``count`` users with ids from ``first``, through the ORM (as the application writes)."""
    step = 5_000
    for lo in range(first, first + count, step):
        with Session(engine) as session:
            session.add_all(
                Person(id=i, email=f"user{i}@example.com")
                for i in range(lo, min(first + count, lo + step))
            )
            session.commit()


def _admin(engine: Engine, *statements: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in statements:
            conn.execute(text(statement))


# -- 1. the step against the job ----------------------------------------------------------


def step_vs_job(rounds: int = ROUNDS) -> Ratio:
    """Times an autopilot step against ``db reencrypt``'s job (see the module docstring)."""
    from greenlang_crypto.sqlalchemy.autopilot import ColumnRegistry, run_autopilot_once
    from greenlang_crypto.sqlalchemy.migrate import ColumnJob

    schema = f"glc_gate_ap_{uuid.uuid4().hex[:8]}"
    template = f"{TABLE}_tpl"
    key_dir = _new_key_dir()
    side_dirs: list[Path] = []
    with _private_database("glc_gate_ap_step") as url:
        # The engine the CLI's db commands build (commands._engine), for both sides.
        engine = create_engine(url, hide_parameters=True, pool_pre_ping=True)
        try:
            # Version 1's rows, then the rotation an operator (or an earlier step) made; the
            # service is closed before its key directory is copied for each side.
            svc = _open_service(key_dir)
            _current["service"] = svc
            try:
                Base.metadata.create_all(engine)
                _fill(engine, 1, N_ROWS)
                svc.rotate()
            finally:
                svc.close()
            _admin(engine, f"ALTER TABLE {TABLE} RENAME TO {template}")
            registry = ColumnRegistry.from_metadata(Base)
            spec = registry.get(f"{TABLE}.email")
            assert spec is not None

            def fresh_copy() -> None:
                # Each side starts from the same v1 rows in a table no side has written to (no
                # dead row versions, statistics fresh, every page on disk).
                _admin(
                    engine,
                    f"DROP TABLE IF EXISTS {TABLE}",
                    f"CREATE TABLE {TABLE} (LIKE {template} INCLUDING ALL)",
                    f"INSERT INTO {TABLE} SELECT * FROM {template}",
                    f"VACUUM ANALYZE {TABLE}",
                    "CHECKPOINT",
                )

            def fresh_service() -> Any:
                # The key directory as the rotation left it: the step's retirement changes
                # the key store, and a service opened on it would carry that into the next
                # round (and could no longer read the copy's version-1 rows).
                copy = Path(tempfile.mkdtemp(prefix="glc-gate-autopilot-side-"))
                side_dirs.append(copy)
                shutil.copytree(key_dir, copy, dirs_exist_ok=True)
                service = _open_service(copy, retire_after_seconds=GRACE)
                _current["service"] = service
                # No run of the job in the job table: a first run, as after a rotation.
                ColumnJob(engine, service, spec, mode="reencrypt", state_schema=schema).reset()
                return service

            def run_step(service: Any) -> None:
                report = run_autopilot_once(
                    engine,
                    service,
                    registry,
                    budget_seconds=3600.0,
                    clock=lambda: time.time() + CLOCK_AHEAD,
                    batch_size=BATCH,
                    state_schema=schema,
                    lock_key=LOCK_KEY,
                )
                moved = report.columns[f"{TABLE}.email"]
                assert report.status == "done", report.as_dict()
                assert moved["written"] == N_ROWS and moved["remaining"] == 0, moved
                assert {"action": "retire", "below": 2} in report.actions, report.actions

            def run_job(service: Any) -> None:
                job = ColumnJob(
                    engine, service, spec, mode="reencrypt", batch_size=BATCH, state_schema=schema
                )
                out = job.run()
                assert out.written == N_ROWS and out.remaining == 0, out

            ratios, t_step, t_job = [], [], []
            for i in range(rounds + 1):
                sides = [("step", run_step), ("job", run_job)]
                times = {}
                for name, fn in sides if i % 2 else sides[::-1]:
                    fresh_copy()
                    service = fresh_service()
                    try:
                        gc.collect()
                        gc.disable()
                        try:
                            start = time.perf_counter()
                            fn(service)
                            times[name] = time.perf_counter() - start
                        finally:
                            gc.enable()
                    finally:
                        service.close()
                        _current.pop("service", None)
                        shutil.rmtree(side_dirs.pop(), ignore_errors=True)
                if i == 0:
                    continue  # warm-up: connections, compiled statements, imports
                ratios.append(times["step"] / times["job"])
                t_step.append(times["step"])
                t_job.append(times["job"])
                if _verbose():
                    print(
                        f"  round {i}: step {times['step']:.3f} s job {times['job']:.3f} s "
                        f"ratio {ratios[-1]:.3f}",
                        flush=True,
                    )
            return ratio_of_rounds(NAME_STEP, ratios, t_step, t_job, TARGET_STEP)
        finally:
            # The job tables go with the database.
            engine.dispose()
            _current.pop("service", None)
            for d in [key_dir, *side_dirs]:
                shutil.rmtree(d, ignore_errors=True)


# -- 2. the application's writes beside a step ---------------------------------------------


def _child(data_dir: str, schema: str, go_dir: str, rate: float) -> int:
    """The step process of the write-latency check (``--autopilot-child``).

    Runs step ``k`` once the file ``go-<k>`` exists, until the file ``quit`` does, and prints
    one JSON line per step: its report, or ``stopped`` when the parent interrupted it
    (SIGINT).
    """
    from greenlang_crypto.sqlalchemy.autopilot import ColumnRegistry, run_autopilot_once

    service = _open_service(Path(data_dir))
    _current["service"] = service
    # Named, so that the parent can find the step's backends (their CPU time, verbose only).
    engine = create_engine(
        os.environ["GLC_GATE_AP_URL"],
        hide_parameters=True,
        connect_args={"application_name": "glc-gate-autopilot"},
    )
    registry = ColumnRegistry.from_metadata(Base)
    go = Path(go_dir)
    stops: list[int] = []
    in_step = [False]

    def stop(signum: int, frame: object) -> None:
        # A stop that comes after the step ended by itself has nothing to stop.
        if in_step[0]:
            stops.append(signum)
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"started": os.getpid()}), flush=True)
    try:
        for k in range(1_000_000):
            while not (go / f"go-{k}").exists():
                if (go / "quit").exists():
                    return 0
                time.sleep(0.005)
            stops.clear()
            in_step[0] = True
            try:
                report = run_autopilot_once(
                    engine,
                    service,
                    registry,
                    budget_seconds=600.0,
                    max_rows_per_second=rate,
                    batch_size=BATCH,
                    state_schema=schema,
                    lock_key=LOCK_KEY,
                )
                in_step[0] = False
                print(json.dumps({"report": report.as_dict()}), flush=True)
            except BaseException:
                in_step[0] = False
                if not stops:
                    raise
                # The parent's stop: the job gives its ranges back and the lock goes with
                # the session; the next step resumes after the last committed batch. (An
                # interrupted driver call may surface as the driver's own error instead.)
                print(json.dumps({"stopped": k}), flush=True)
    finally:
        engine.dispose()
        service.close()
    return 0


def _moved(engine: Engine, schema: str, job_base: str) -> int:
    """Rows the runs of job ``job_base`` have processed (the job table's checkpoints)."""
    with engine.connect() as conn:
        found = conn.execute(
            text(
                f"SELECT coalesce(sum(processed), 0) FROM {schema}.glc_job_ranges "
                "WHERE starts_with(job, :p)"
            ),
            {"p": job_base + "@"},
        ).scalar()
    return int(found or 0)


def _remaining(engine: Engine, version: int) -> int:
    """Rows whose envelope header names another key version than ``version``."""
    version_expr = " | ".join(
        f"(get_byte(email, {i})::bigint << {8 * (7 - i)})" for i in range(4, 8)
    )
    with engine.connect() as conn:
        found = conn.execute(
            text(f"SELECT count(*) FROM {TABLE} WHERE {version_expr} <> :v"),
            {"v": version},
        ).scalar()
    return int(found or 0)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (``/proc``; 0 for one that is gone)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def writes_beside_step(rounds: int = WRITE_ROUNDS) -> Ratio:
    """Times the application's writes beside a rate-capped step and alone (module docstring)."""
    from greenlang_crypto.sqlalchemy.autopilot import ColumnRegistry
    from greenlang_crypto.sqlalchemy.migrate import ColumnJob

    schema = f"glc_gate_ap_{uuid.uuid4().hex[:8]}"
    key_dir = _new_key_dir()
    go_dir = Path(tempfile.mkdtemp(prefix="glc-gate-autopilot-go-"))
    child: subprocess.Popen[str] | None = None
    with (
        _private_database("glc_gate_ap_writes") as url,
        tempfile.TemporaryFile(mode="w+") as stderr,
    ):
        engine = create_engine(url, hide_parameters=True)
        svc = _open_service(key_dir)
        _current["service"] = svc
        try:
            Base.metadata.create_all(engine)
            _fill(engine, 1, WRITE_TABLE_ROWS)
            _admin(engine, f"ALTER TABLE {TABLE} SET (autovacuum_enabled = off)")
            svc.rotate()
            spec = ColumnRegistry.from_metadata(Base).get(f"{TABLE}.email")
            assert spec is not None
            # The job table exists before the first step, so it can be watched from the start.
            ColumnJob(engine, svc, spec, mode="reencrypt", state_schema=schema).ensure_tables()
            next_id = WRITE_TABLE_ROWS + 1
            rng = random.Random(7)

            def window() -> tuple[float, list[float]]:
                """Writes for ``WINDOW`` seconds: (mean seconds per write, each write's)."""
                nonlocal next_id
                latencies = []
                gc.collect()
                gc.disable()
                try:
                    began = time.perf_counter()
                    end = began + WINDOW
                    j = 0
                    while True:
                        start = time.perf_counter()
                        if start >= end:
                            break
                        with Session(engine) as session:
                            if j % 2:
                                person = session.get(Person, rng.randint(1, WRITE_TABLE_ROWS))
                                assert person is not None
                                person.email = f"renamed{j}.{next_id}@example.com"
                            else:
                                session.add(Person(id=next_id, email=f"user{next_id}@example.com"))
                                next_id += 1
                            session.commit()
                        latencies.append(time.perf_counter() - start)
                        j += 1
                    return (time.perf_counter() - began) / len(latencies), latencies
                finally:
                    gc.enable()

            env = dict(os.environ, GLC_GATE_AP_URL=url, PYTHONPATH=str(REPO))
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benches.gate_autopilot",
                    "--autopilot-child",
                    str(key_dir),
                    schema,
                    str(go_dir),
                    str(RATE),
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
            lines: queue.Queue[str] = queue.Queue()

            def pump(stream: Any) -> None:
                for line in stream:
                    lines.put(line)
                lines.put("")

            threading.Thread(target=pump, args=(child.stdout,), daemon=True).start()

            def next_line(timeout: float = 60.0) -> dict[str, Any]:
                try:
                    line = lines.get(timeout=timeout)
                except queue.Empty:
                    line = ""
                if not line:
                    stderr.seek(0)
                    raise RuntimeError(f"the autopilot process failed: {stderr.read()[-3000:]}")
                found: dict[str, Any] = json.loads(line)
                return found

            child_pid = next_line()["started"]
            step_no = 0

            def beside_step() -> tuple[float, list[float], int, float]:
                """One window while a step moves rows: its mean, latencies, rows moved, CPU."""
                nonlocal step_no
                assert child is not None
                if _remaining(engine, svc.primary_version) < 5 * RATE:
                    # Not enough rows left for a step: a rotation makes them all old again
                    # (the step forgets the run toward the old primary).
                    svc.rotate()
                # The run this step resumes or starts (toward the current primary).
                job_base = ColumnJob(engine, svc, spec, mode="reencrypt").job_base
                first = _moved(engine, schema, job_base)
                (go_dir / f"go-{step_no}").touch()
                step_no += 1
                # Past the step's counting scans and its first batches: batches are flowing.
                deadline = time.monotonic() + 60
                while _moved(engine, schema, job_base) < first + 2 * BATCH:
                    if child.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the autopilot step moved no rows")
                    time.sleep(0.01)
                pids = [child_pid, *backends()]
                before, cpu = _moved(engine, schema, job_base), _cpu_seconds(pids)
                mean, latencies = window()
                moved = _moved(engine, schema, job_base) - before
                cpu = _cpu_seconds(pids) - cpu
                child.send_signal(signal.SIGINT)
                outcome = next_line()
                # At RATE it moves about RATE * WINDOW rows; far fewer means it stopped (or
                # stalled) inside the window, which then ran partly alone.
                if "stopped" not in outcome or moved < RATE * WINDOW / 3:
                    raise RuntimeError(f"the step was not moving rows for the window: {outcome}")
                _admin(engine, f"VACUUM {TABLE}")
                return mean, latencies, moved, cpu

            def backends() -> list[int]:
                with engine.connect() as conn:
                    return [
                        int(pid)
                        for pid in conn.execute(
                            text(
                                "SELECT pid FROM pg_stat_activity "
                                "WHERE application_name = 'glc-gate-autopilot'"
                            )
                        ).scalars()
                    ]

            # Warm-up: the pool, compiled statements, the new version's DEK, the step
            # process's first step (its imports).
            window()
            beside_step()
            alone = [window()[0]]
            ratios, t_with, t_without = [], [], []
            for i in range(rounds):
                mean, latencies, moved, cpu = beside_step()
                after, alone_latencies = window()
                # Each window beside the step against the windows alone just before and
                # after it: a drift over the three (a neighbour's work) cancels.
                peer = (alone[-1] + after) / 2
                alone.append(after)
                ratios.append(mean / peer)
                t_with.append(mean)
                t_without.append(peer)
                if _verbose():
                    p95 = statistics.quantiles(latencies, n=20)[-1]
                    p95_alone = statistics.quantiles(alone_latencies, n=20)[-1]
                    print(
                        f"  round {i + 1}: with {mean * 1e3:.2f} ms/write "
                        f"(p95 {p95 * 1e3:.2f}) alone {peer * 1e3:.2f} ms/write "
                        f"(p95 after {p95_alone * 1e3:.2f}) ratio {ratios[-1]:.3f}; the step "
                        f"moved {moved / WINDOW:,.0f} rows/s on {cpu / WINDOW:.0%} of a CPU "
                        "(its process and backends)",
                        flush=True,
                    )
            return ratio_of_rounds(NAME_WRITES, ratios, t_with, t_without, TARGET_WRITES)
        finally:
            (go_dir / "quit").touch()
            if child is not None:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)  # a step in progress stops first
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            engine.dispose()
            svc.close()
            _current.pop("service", None)
            shutil.rmtree(key_dir, ignore_errors=True)
            shutil.rmtree(go_dir, ignore_errors=True)


def checks() -> list[Check]:
    """The autopilot checks (need ``GLC_PG_URL``)."""
    return [step_vs_job, writes_beside_step]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--autopilot-child"]:
        data_dir, schema, go_dir, rate = sys.argv[2:6]
        raise SystemExit(_child(data_dir, schema, go_dir, float(rate)))
    for check in checks():
        print(check().line(), flush=True)
