"""The rotation autopilot against a real PostgreSQL: due dates, budgets, retirement, the lock.

* Rotation happens only once the primary is older than the period (an injected clock).
* Re-encryption advances within its budget and resumes at the next step; the result is every
  row under the new version, reading back its own value.
* Retirement waits for ``retire_after`` and for 0 rows under the old versions; a quarantined
  row blocks it with the reason.
* One runner at a time: a second one returns at once naming the holder, also when two
  processes start together; a runner killed with SIGKILL mid-re-encryption leaves nothing
  lost or done twice, and the next step finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from greenlang_crypto import parse_envelope
from greenlang_crypto._core import ENVELOPE_MAGIC
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import KeyStoreUnavailableError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EncryptedString
from greenlang_crypto.sqlalchemy.autopilot import (
    EXIT_BLOCKED,
    EXIT_DONE,
    EXIT_PROGRESSING,
    ColumnRegistry,
    run_autopilot_once,
)
from tests.conftest import database_prefix, pg_private_database
from tests.integration import autopilot_proc
from tests.integration.autopilot_proc import Base, Person, envelope_versions

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with pg_private_database(database_prefix(request), sqlalchemy_url=True) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url, hide_parameters=True)
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    LocalKeyProvider(d).create_master_key()
    return d


def _service(data_dir: Path, **policy: Any) -> EncryptionService:
    svc = EncryptionService(EncryptionServiceConfig(data_dir=data_dir, **policy))
    autopilot_proc.use_service(svc)
    return svc


@pytest.fixture
def make_service(data_dir: Path) -> Iterator[Any]:
    made: list[EncryptionService] = []

    def make(**policy: Any) -> EncryptionService:
        svc = _service(data_dir, **policy)
        made.append(svc)
        return svc

    yield make
    autopilot_proc.use_service(None)
    for svc in made:
        svc.close()


def _fill(engine: Engine, count: int, first: int = 1) -> None:
    with Session(engine) as session:
        session.add_all(
            Person(id=i, email=f"user{i}@example.com") for i in range(first, first + count)
        )
        session.commit()


def _all_read_back(engine: Engine, count: int) -> None:
    with Session(engine) as session:
        people = session.scalars(select(Person).order_by(Person.id)).all()
    assert [(p.id, p.email) for p in people] == [
        (i, f"user{i}@example.com") for i in range(1, count + 1)
    ]


def _step(
    engine: Engine,
    svc: EncryptionService,
    offset: float = 0.0,
    registry: ColumnRegistry | None = None,
    **kw: Any,
) -> Any:
    kw.setdefault("budget_seconds", 30.0)
    kw.setdefault("batch_size", 20)
    return run_autopilot_once(
        engine,
        svc,
        registry or ColumnRegistry.from_metadata(Base),
        clock=lambda: time.time() + offset,
        **kw,
    )


def test_rotation_happens_only_once_the_primary_is_older_than_the_period(
    engine: Engine, make_service: Any
) -> None:
    # The index key's own period is longer: it is not rotated with the data key.
    svc = make_service(rotation_period_seconds=60, index_rotation_period_seconds=600)
    created = svc.versions()[0].created_at
    early = _step(engine, svc, offset=30)
    assert (early.status, early.exit_code, early.actions) == ("done", EXIT_DONE, [])
    # No blind index has been used yet: there is no index key to rotate (the first use
    # makes a fresh one).
    assert early.next_index_rotation_at is None
    assert svc.primary_version == 1
    assert early.next_rotation_at == pytest.approx(created + 60)
    due = _step(engine, svc, offset=61)
    assert due.actions == [{"action": "rotate", "old_version": 1, "new_version": 2}]
    assert (due.status, due.primary_version) == ("done", 2)
    # Run again a minute later (a scheduler firing every minute): the new primary is young.
    again = _step(engine, svc, offset=59)
    assert (again.actions, svc.primary_version) == ([], 2)
    created2 = next(v.created_at for v in svc.versions() if v.version == 2)
    assert again.next_rotation_at == pytest.approx(created2 + 60)


def test_reencryption_advances_within_its_budget_and_resumes(
    engine: Engine, make_service: Any
) -> None:
    svc = make_service()
    _fill(engine, 200)
    svc.rotate()
    started = time.monotonic()
    first = _step(engine, svc, budget_seconds=0.6, max_rows_per_second=100)
    took = time.monotonic() - started
    assert (first.status, first.exit_code) == ("progressing", EXIT_PROGRESSING)
    assert took < 10
    moved = envelope_versions(engine).get(2, 0)
    assert 20 <= moved < 200  # the budget and the rate cap stopped it after some batches
    assert first.columns["ap_people.email"]["remaining"] == 200 - moved
    assert any("budget spent" in r for r in first.reasons)
    second = _step(engine, svc)
    assert (second.status, second.exit_code) == ("done", EXIT_DONE)
    # The second step resumed from the checkpoint: it wrote only what was left.
    assert second.columns["ap_people.email"]["written"] == 200 - moved
    assert second.columns["ap_people.email"]["remaining"] == 0
    assert envelope_versions(engine) == {2: 200}
    _all_read_back(engine, 200)
    # Nothing due any more: a third step does nothing.
    third = _step(engine, svc)
    assert (third.status, third.actions) == ("done", [])


def test_reencryption_past_reencrypt_within_is_reported_overdue(
    engine: Engine, make_service: Any
) -> None:
    svc = make_service(reencrypt_within_seconds=30)
    _fill(engine, 100)
    svc.rotate()
    in_time = _step(engine, svc, offset=10, budget_seconds=0.2, max_rows_per_second=100)
    assert (in_time.status, in_time.overdue) == ("progressing", [])
    late = _step(engine, svc, offset=31, budget_seconds=0.2, max_rows_per_second=100)
    assert late.status == "progressing"
    assert late.overdue == ["re-encryption to v2 is behind schedule: due 30 s after the rotation"]
    # Once every row is moved nothing is overdue, however late it is.
    assert _step(engine, svc, offset=1000).overdue == []


def _open_ranges(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT job FROM encryption.glc_job_ranges WHERE state <> 'done'")
            ).scalars()
        )


def test_a_run_cut_short_by_a_rotation_is_forgotten_not_left_open(
    engine: Engine, make_service: Any
) -> None:
    # Unfinished ranges count as an unfinished job, which blocks every retirement: a run
    # toward a version that is no longer the primary must not stay open for ever.
    svc = make_service()
    _fill(engine, 200)
    svc.rotate()
    first = _step(engine, svc, budget_seconds=0.3, max_rows_per_second=100)
    assert first.status == "progressing"
    stale = _open_ranges(engine)
    assert stale and all(j.startswith("reencrypt:ap_people.email:v2:") for j in stale)
    svc.rotate()
    second = _step(engine, svc)
    assert second.status == "done", second.as_dict()
    base = stale[0].partition("@")[0]
    assert {"action": "forget-stale-run", "job": base} in second.actions
    assert _open_ranges(engine) == []
    assert envelope_versions(engine) == {3: 200}
    _all_read_back(engine, 200)


def test_retirement_waits_for_retire_after_and_for_zero_rows(
    engine: Engine, make_service: Any
) -> None:
    svc = make_service(retire_after_seconds=100)
    _fill(engine, 60)
    svc.rotate()
    # The grace period has not passed: re-encryption runs, nothing is retired.
    early = _step(engine, svc)
    assert early.status == "done" and svc.min_decryption_version == 1
    assert [a["action"] for a in early.actions] == ["reencrypt"]
    rotated_at = next(v.rotated_at for v in svc.versions() if v.version == 1)
    assert early.next_retirement_at == pytest.approx(rotated_at + 100)
    # A second rotation: every row is under an older version again. Past the grace period
    # retirement still waits until the re-encryption has moved them all.
    svc.rotate()
    assert envelope_versions(engine) == {2: 60}
    partial = _step(engine, svc, offset=200, budget_seconds=0.3, max_rows_per_second=100)
    assert partial.status == "progressing"
    assert svc.min_decryption_version == 1
    assert any("waits for re-encryption" in r for r in partial.reasons)
    full = _step(engine, svc, offset=200)
    assert {"action": "retire", "below": 3} in full.actions
    assert (full.status, full.min_decryption_version) == ("done", 3)
    assert envelope_versions(engine) == {3: 60}
    _all_read_back(engine, 60)


def test_a_quarantined_row_blocks_retirement_with_the_reason(
    engine: Engine, make_service: Any
) -> None:
    svc = make_service(retire_after_seconds=10)
    _fill(engine, 10)
    with engine.begin() as conn:
        value = bytes(conn.execute(text("SELECT email FROM ap_people WHERE id = 4")).scalar_one())
        # One flipped bit in the tag: the header still says v1, the value no longer opens.
        broken = value[:-1] + bytes([value[-1] ^ 1])
        conn.execute(text("UPDATE ap_people SET email = :v WHERE id = 4"), {"v": broken})
    svc.rotate()
    report = _step(engine, svc, offset=60)
    assert (report.status, report.exit_code) == ("blocked", EXIT_BLOCKED)
    assert any("ap_people.email: 1 row(s) quarantined" in r for r in report.reasons)
    assert svc.min_decryption_version == 1
    assert not any(a["action"] == "retire" for a in report.actions)
    assert envelope_versions(engine) == {1: 1, 2: 9}
    # Blocked again at the next step, until the row is dealt with.
    assert _step(engine, svc, offset=60).status == "blocked"
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM ap_people WHERE id = 4"))
    cleared = _step(engine, svc, offset=60)
    assert (cleared.status, cleared.min_decryption_version) == ("done", 2)
    assert {"action": "retire", "below": 2} in cleared.actions


def test_an_encrypted_column_no_job_can_take_blocks_retirement(
    engine: Engine, make_service: Any
) -> None:
    svc = make_service(retire_after_seconds=10)
    _fill(engine, 5)
    svc.rotate()
    md = MetaData()
    Table(
        "ap_legacy",
        md,
        Column("id", Integer, primary_key=True),
        Column("notes", EncryptedString(svc, data_class="pii", tenant_id=lambda: "acme")),
    )
    registry = ColumnRegistry.from_metadata(Base)
    registry.unsupported.update(ColumnRegistry.from_metadata(md).unsupported)
    report = _step(engine, svc, offset=60, registry=registry)
    assert (report.status, report.exit_code) == ("blocked", EXIT_BLOCKED)
    assert any(
        "ap_legacy.notes is encrypted but the autopilot cannot re-encrypt it" in r
        and "callable tenant" in r
        for r in report.reasons
    )
    assert svc.min_decryption_version == 1
    assert envelope_versions(engine) == {2: 5}  # the registered column was still moved


@contextlib.contextmanager
def _paused_instance(data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another instance on the same key store, started, then paused with SIGSTOP (a VM
    stopped, a long GC pause) before it can load what the test changes next."""
    code = (
        "import time; from greenlang_crypto.config import EncryptionServiceConfig as C; "
        "from greenlang_crypto.service import EncryptionService as S; "
        "s = S(C.from_env()); print('ready', s.primary_version, flush=True); time.sleep(120)"
    )
    env = {**os.environ, "GLC_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO / "python")}
    other = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None
        assert other.stdout.readline().split() == ["ready", "1"]
        other.send_signal(signal.SIGSTOP)
        yield other
    finally:
        other.send_signal(signal.SIGCONT)
        other.kill()
        other.communicate(timeout=10)


def test_a_paused_instance_still_sealing_under_the_old_version_blocks_retirement(
    engine: Engine, make_service: Any, data_dir: Path
) -> None:
    svc = make_service(retire_after_seconds=10)
    _fill(engine, 5)
    with _paused_instance(data_dir) as other:  # paused before it could load the rotation
        svc.rotate()
        report = _step(engine, svc, offset=60)
        assert (report.status, report.exit_code) == ("blocked", EXIT_BLOCKED), report.as_dict()
        assert any(
            f":{other.pid} " in r and "still encrypts under v1" in r for r in report.reasons
        ), report.reasons
        assert svc.min_decryption_version == 1


def test_a_second_runner_returns_at_once_naming_the_holder(
    engine: Engine, make_service: Any, db_url: str
) -> None:
    from greenlang_crypto.sqlalchemy.autopilot import AUTOPILOT_LOCK_KEY

    svc = make_service(rotation_period_seconds=60)
    libpq = "postgresql://" + db_url.partition("://")[2]
    with psycopg.connect(libpq, autocommit=True, application_name="other-runner") as other:
        other.execute("SELECT pg_advisory_lock(%s)", (AUTOPILOT_LOCK_KEY,))
        started = time.monotonic()
        report = _step(engine, svc, offset=120)
        assert time.monotonic() - started < 2
        assert (report.status, report.exit_code, report.actions) == ("held", EXIT_DONE, [])
        assert report.holder == f"other-runner (pid {other.info.backend_pid})"
        assert svc.primary_version == 1  # the rotation was due, and not done
    # Released: the next step acts.
    assert _step(engine, svc, offset=120).actions[0]["action"] == "rotate"


def _spawn(
    db_url: str, data_dir: Path, *args: str, go: Path | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "GLC_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    if go is not None:
        env["AP_GO_FILE"] = str(go)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.autopilot_proc", db_url, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_at_once_exactly_one_acts(
    engine: Engine, make_service: Any, db_url: str, data_dir: Path
) -> None:
    svc = make_service()
    _fill(engine, 300)
    svc.rotate()
    go = data_dir.parent / "go"
    procs = [_spawn(db_url, data_dir, "4", "60", "0", go=go) for _ in range(2)]
    outs = []
    try:
        for p in procs:
            assert p.stdout is not None
            assert json.loads(p.stdout.readline()) == {"started": True}
        go.touch()  # both are up: they race for the lock now
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert out.strip(), err
            outs.append((p.pid, p.returncode, json.loads(out.splitlines()[-1])))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    acted = [o for o in outs if o[2]["actions"]]
    held = [o for o in outs if o[2]["status"] == "held"]
    assert len(acted) == 1 and len(held) == 1, outs
    pid, code, report = acted[0]
    assert (code, report["status"]) == (EXIT_PROGRESSING, "progressing")
    assert held[0][1] == EXIT_DONE
    assert held[0][2]["holder"].startswith("glc-autopilot ")
    assert f":{pid} " in held[0][2]["holder"]
    moved = envelope_versions(engine).get(2, 0)
    assert moved == 300 - report["columns"]["ap_people.email"]["remaining"]


def _sessions_of_runners(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND (application_name = 'autopilot-proc' "
                    "OR application_name LIKE 'glc-autopilot %')"
                )
            ).scalar_one()
        )


def test_a_runner_killed_mid_reencryption_loses_nothing(
    engine: Engine, make_service: Any, db_url: str, data_dir: Path
) -> None:
    svc = make_service()
    _fill(engine, 400)
    svc.rotate()
    proc = _spawn(db_url, data_dir, "60", "100", "0")
    try:
        deadline = time.monotonic() + 30
        while envelope_versions(engine).get(2, 0) < 100:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes its pipes
    assert proc.returncode == -signal.SIGKILL
    # The server ends the dead client's sessions once it notices the closed sockets; a
    # transaction whose COMMIT was already sent may still commit until then.
    deadline = time.monotonic() + 30
    while _sessions_of_runners(engine):
        assert time.monotonic() < deadline, "the killed runner's sessions stayed"
        time.sleep(0.05)
    done_before = envelope_versions(engine).get(2, 0)
    assert 100 <= done_before < 400
    # The killed runner's session (and lock) is gone: the next step acts at once and
    # takes the ranges of the killed runner back from their checkpoint.
    report = _step(engine, svc)
    assert report.status == "done", report.as_dict()
    assert report.columns["ap_people.email"]["written"] == 400 - done_before
    assert envelope_versions(engine) == {2: 400}
    _all_read_back(engine, 400)


def _cli(data_dir: Path, db_url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    argv = [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data_dir), "db"]
    argv += ["autopilot", "--once", "--model", "tests.integration.autopilot_proc:Base"]
    argv += ["--url", db_url, "--json", *args]
    full = dict(os.environ, PYTHONPATH=str(REPO / "python"), GLC_DATA_DIR=str(data_dir))
    full.pop("GLC_AUDIT_URL", None)  # the data directory's own audit log, unless given
    full.update(env or {})
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=full, check=False, cwd=REPO
    )


def test_the_cli_step_reencrypts_retires_and_audits_each_action(
    engine: Engine, make_service: Any, db_url: str, data_dir: Path
) -> None:
    import sqlite3

    svc = make_service()
    _fill(engine, 30)
    svc.rotate()
    svc.close()
    policy = {"GLC_RETIRE_AFTER_SECONDS": "0.001"}
    run = _cli(data_dir, db_url, env=policy)
    assert run.returncode == EXIT_DONE, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["status"] == "done" and report["exit_code"] == EXIT_DONE
    assert [a["action"] for a in report["actions"]] == ["reencrypt", "retire"]
    assert (report["primary_version"], report["min_decryption_version"]) == (2, 2)
    assert envelope_versions(engine) == {2: 30}
    with sqlite3.connect(data_dir / "audit.db") as db:
        rows = db.execute(
            "SELECT action, outcome, details FROM glc_audit "
            "WHERE action IN ('db_reencrypt', 'key_retire') ORDER BY rowid"
        ).fetchall()
    mine = [(a, o) for a, o, d in rows if '"autopilot"' in (d or "")]
    assert ("db_reencrypt", "intent") in mine and ("db_reencrypt", "success") in mine
    assert ("key_retire", "intent") in mine and ("key_retire", "success") in mine
    # Nothing due: the next run does nothing and says so.
    again = _cli(data_dir, db_url, env=policy)
    assert again.returncode == EXIT_DONE
    assert json.loads(again.stdout)["actions"] == []


def test_the_cli_step_with_the_audit_sink_down_changes_nothing(
    engine: Engine, make_service: Any, db_url: str, data_dir: Path
) -> None:
    svc = make_service()
    _fill(engine, 10)
    svc.rotate()
    svc.close()
    down = {
        "GLC_AUDIT_URL": "postgresql://nobody@127.0.0.1:1/nowhere",
        "GLC_RETIRE_AFTER_SECONDS": "0.001",
    }
    run = _cli(data_dir, db_url, env=down)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "AuditSinkUnavailableError" in run.stderr
    assert envelope_versions(engine) == {1: 10}
    fresh = make_service()
    assert fresh.min_decryption_version == 1


def test_each_step_pushes_rows_per_version_and_due_dates_to_the_metrics(
    engine: Engine, make_service: Any, db_url: str
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from greenlang_crypto.metrics import EncryptionMetrics, autopilot_state
    from greenlang_crypto.sqlalchemy.autopilot import AUTOPILOT_LOCK_KEY

    autopilot_state().reset()
    svc = make_service(
        rotation_period_seconds=3600, reencrypt_within_seconds=600, retire_after_seconds=60
    )
    _fill(engine, 100)
    # A value in no envelope is counted apart and never shown (the last row: the budget
    # stops the step before the job reaches it).
    with engine.begin() as conn:
        conn.execute(text("UPDATE ap_people SET email = 'secret-plain' WHERE id = 100"))
    svc.rotate()
    metrics = EncryptionMetrics(svc)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    # Ten seconds after the rotation on the policy's clock, the step stops at its budget.
    report = _step(engine, svc, offset=10, budget_seconds=0.2, max_rows_per_second=100)
    assert report.status == "progressing"
    body = generate_latest(registry).decode()
    assert "secret-plain" not in body and "example.com" not in body
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body)
        for s in f.samples
    }
    rows = {
        dict(labels)["key_version"]: v
        for (name, labels), v in samples.items()
        if name == "gl_encryption_column_rows"
    }
    assert rows["none"] == 1
    assert rows["1"] > 0 and rows.get("2", 0) > 0 and rows["1"] + rows["2"] == 99
    assert rows == {k: float(n) for k, n in _labels(_versions_and_plain(engine)).items()}
    due = {
        dict(labels)["action"]: v
        for (name, labels), v in samples.items()
        if name == "gl_encryption_autopilot_next_action_seconds"
    }
    # Due dates keep their distance on the policy's clock: 600 s after the rotation, 10 s
    # of which had passed; the next rotation an hour after it.
    assert 580 < due["reencrypt"] <= 590
    assert 3580 < due["rotate"] <= 3590
    status = {
        dict(labels)["status"]: v
        for (name, labels), v in samples.items()
        if name == "gl_encryption_autopilot_last_run_status"
    }
    assert status["progressing"] == 1 and sum(status.values()) == 1
    assert samples[("gl_encryption_autopilot_behind_schedule", ())] == 0
    assert 0 <= samples[("gl_encryption_key_age_seconds", ())] < 60
    # Past the deadline with rows left: behind schedule, and the countdown is negative.
    _step(engine, svc, offset=700, budget_seconds=0.1, max_rows_per_second=50)
    last = autopilot_state().snapshot()
    assert last is not None and last.behind == 1
    assert last.next_actions["reencrypt"] < time.time()
    # A step that finds the lock held drops its figures: the holder's are the fleet's.
    libpq = "postgresql://" + db_url.partition("://")[2]
    with psycopg.connect(libpq, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (AUTOPILOT_LOCK_KEY,))
        assert _step(engine, svc).status == "held"
    held = autopilot_state().snapshot()
    assert held is not None and (held.status, held.rows, held.next_actions) == ("held", {}, {})
    _step(engine, svc, offset=700, budget_seconds=0.1, max_rows_per_second=50)
    # A step that cannot reach the database is recorded as failed; the figures are kept.
    dead = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with pytest.raises(KeyStoreUnavailableError):
        _step(dead, svc)
    dead.dispose()
    last = autopilot_state().snapshot()
    assert last is not None and last.status == "failed" and last.behind == 1
    autopilot_state().reset()


def _versions_and_plain(engine: Engine) -> dict[int | None, int]:
    out: dict[int | None, int] = {}
    with engine.connect() as conn:
        for (value,) in conn.execute(text("SELECT email FROM ap_people")):
            raw = bytes(value)
            v = parse_envelope(raw).key_version if raw[:1] == bytes([ENVELOPE_MAGIC]) else None
            out[v] = out.get(v, 0) + 1
    return out


def _labels(counts: dict[int | None, int]) -> dict[str, int]:
    return {"none" if v is None else str(v): n for v, n in counts.items()}


def test_a_count_that_fails_keeps_the_report_and_the_previous_figures(
    engine: Engine, make_service: Any
) -> None:
    from sqlalchemy import event

    from greenlang_crypto.metrics import autopilot_state

    autopilot_state().reset()
    svc = make_service(rotation_period_seconds=3600)
    _fill(engine, 10)
    first = _step(engine, svc)
    assert first.notes == []
    before = autopilot_state().snapshot()
    assert before is not None
    assert before.rows == {("ap_people", "email", "1"): 10}

    # The server cancels the count (as a statement_timeout would); nothing else is touched.
    def cancel_the_count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "GROUP BY 1" in statement:
            raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    event.listen(engine, "before_cursor_execute", cancel_the_count)
    try:
        svc.rotate()
        report = _step(engine, svc, offset=10)
    finally:
        event.remove(engine, "before_cursor_execute", cancel_the_count)
    assert report.status == "done" and report.columns["ap_people.email"]["written"] == 10
    assert report.notes == ["rows per key version were not counted (QueryCanceled)"]
    after = autopilot_state().snapshot()
    assert after is not None and after.status == "done"
    assert after.rows == before.rows  # kept, not emptied
    assert envelope_versions(engine) == {2: 10}
    autopilot_state().reset()


def _index_versions(engine: Engine) -> dict[int, int]:
    """Rows per blind-index key version (the first byte of each stored index value)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT get_byte(email_idx, 0), count(*) FROM ap_people GROUP BY 1")
        ).all()
    return {int(v): int(n) for v, n in rows}


def _found(engine: Engine, email: str) -> list[int]:
    with Session(engine) as session:
        return list(session.scalars(select(Person.id).where(Person.email.matches(email))))


def test_an_index_key_past_its_period_is_rotated_reindexed_and_then_retired(
    engine: Engine, make_service: Any
) -> None:
    svc = make_service(index_rotation_period_seconds=60, retire_after_seconds=100)
    _fill(engine, 40)
    assert _index_versions(engine) == {1: 40}
    made = svc.rotation_schedule().next_index_rotation_at
    early = _step(engine, svc, offset=30)
    assert (early.actions, early.next_index_rotation_at) == ([], pytest.approx(made))
    due = _step(engine, svc, offset=61)
    assert due.actions[0] == {"action": "index-rotate", "old_version": 1, "new_version": 2}
    assert due.actions[1]["action"] == "reencrypt"
    # Every row was re-indexed under the new key; the old one waits for its grace period.
    assert _index_versions(engine) == {2: 40}
    assert svc.index_key_versions() == [(1, "active"), (2, "primary")]
    assert due.status == "done" and due.next_retirement_at is not None
    assert _found(engine, "user7@example.com") == [7]
    # Past the grace period the old index key is retired, once. (A new instance with the
    # index period off: on this test's shifted clock the new key would be due again. The
    # first one leaves the fleet first, or it would count as live until its next heartbeat
    # shows the new keyring.)
    svc.close()
    svc = make_service(retire_after_seconds=100)
    later = _step(engine, svc, offset=101)
    assert later.actions == [{"action": "index-retire", "version": 1}], later.as_dict()
    assert svc.index_key_versions() == [(1, "retired"), (2, "primary")]
    assert _step(engine, svc, offset=101).actions == []
    assert _found(engine, "USER7@example.com") == [7]
    _all_read_back(engine, 40)


def test_an_index_key_is_not_retired_while_an_instance_has_not_loaded_its_successor(
    engine: Engine, make_service: Any, data_dir: Path
) -> None:
    svc = make_service(retire_after_seconds=10)
    _fill(engine, 5)
    # Paused before it could see the new index key: on resuming it would index new rows
    # under the old one.
    with _paused_instance(data_dir) as other:
        svc.rotate_index_key()
        report = _step(engine, svc, offset=60)
        assert report.status == "blocked", report.as_dict()
        assert any(
            f":{other.pid} has not loaded the current keyring" in r for r in report.reasons
        ), report.reasons
        assert svc.index_key_versions() == [(1, "active"), (2, "primary")]
        # The reason is kept where `keys status` shows it.
        last = svc.last_autopilot_step()
        assert last is not None and last["status"] == "blocked"
        assert last["reasons"] == report.reasons


def test_branch_keys_past_their_period_are_rotated_and_old_data_stays_readable(
    engine: Engine, data_dir: Path
) -> None:
    svc = EncryptionService(
        EncryptionServiceConfig(
            data_dir=data_dir, key_reference="branch", branch_rotation_period_seconds=60
        )
    )
    autopilot_proc.use_service(svc)
    try:
        _fill(engine, 10)
        with engine.connect() as conn:
            before = {
                parse_envelope(bytes(v)).branch_id
                for v in conn.execute(text("SELECT email FROM ap_people")).scalars()
            }
        assert len(before) == 1
        assert _step(engine, svc, offset=30).actions == []
        due = _step(engine, svc, offset=61)
        assert due.actions[0] == {"action": "branch-rotate", "scopes": 1}, due.as_dict()
        _fill(engine, 5, first=11)
        with engine.connect() as conn:
            newer = {
                parse_envelope(bytes(v)).branch_id
                for v in conn.execute(text("SELECT email FROM ap_people WHERE id > 10")).scalars()
            }
        assert newer and newer.isdisjoint(before)
        _all_read_back(engine, 15)
    finally:
        autopilot_proc.use_service(None)
        svc.close()


def test_the_background_thread_carries_out_the_policy_and_stops_between_batches(
    engine: Engine, make_service: Any
) -> None:
    from greenlang_crypto.sqlalchemy.autopilot_thread import AutopilotThread

    svc = make_service(rotation_period_seconds=60, retire_after_seconds=30)
    _fill(engine, 300)
    registry = ColumnRegistry.from_metadata(Base)
    # Slow (60 rows/s, batches of 20): the stop must come between batches, not at the end.
    pilot = AutopilotThread(
        engine,
        svc,
        registry,
        interval_seconds=0.2,
        budget_seconds=30,
        max_rows_per_second=60,
        batch_size=20,
        clock=lambda: time.time() + 61,
        lock_key=0x676C6171,
    )
    pilot.start()
    deadline = time.monotonic() + 30
    while envelope_versions(engine).get(2, 0) < 40:
        assert time.monotonic() < deadline, envelope_versions(engine)
        time.sleep(0.1)
    began = time.monotonic()
    pilot.stop(timeout=10)
    assert not pilot.running and time.monotonic() - began < 3
    moved = envelope_versions(engine)
    assert svc.primary_version == 2 and 0 < moved.get(1, 0) < 300, moved
    # A new thread resumes from the checkpoint, finishes and retires v1. (Its instance has
    # the rotation period off: on this test's shifted clock the new primary would be due.)
    svc2 = make_service(retire_after_seconds=30)
    steps: list[Any] = []
    pilot = AutopilotThread(
        engine,
        svc2,
        registry,
        interval_seconds=0.1,
        clock=lambda: time.time() + 61,
        lock_key=0x676C6171,
        on_step=steps.append,
    )
    pilot.start()
    deadline = time.monotonic() + 30
    while svc2.min_decryption_version < 2:
        assert time.monotonic() < deadline, [s and s.as_dict() for s in steps]
        time.sleep(0.1)
    pilot.stop(timeout=10)
    assert envelope_versions(engine) == {2: 300}
    assert pilot.failures == 0 and svc2.primary_version == 2
    _all_read_back(engine, 300)


def test_a_model_whose_table_does_not_exist_blocks_with_the_reason(
    engine: Engine, make_service: Any
) -> None:
    svc = make_service(retire_after_seconds=10)
    _fill(engine, 5)
    svc.rotate()
    # Models ahead of the database: a table the application's migrations have not made yet.
    extra = MetaData()
    Table(
        "ap_not_migrated",
        extra,
        Column("id", Integer, primary_key=True),
        Column(
            "secret", EncryptedString(autopilot_proc.service, data_class="pii", tenant_id="acme")
        ),
    )
    registry = ColumnRegistry.from_metadata(Base)
    for spec in ColumnRegistry.from_metadata(extra):
        registry.add(spec)
    report = _step(engine, svc, offset=60, registry=registry)
    assert (report.status, report.exit_code) == ("blocked", EXIT_BLOCKED), report.as_dict()
    assert any("table ap_not_migrated does not exist" in r for r in report.reasons)
    # The other column still moved; nothing was retired on a count that could not be made.
    assert envelope_versions(engine) == {2: 5}
    assert svc.min_decryption_version == 1


def test_a_column_the_autopilot_cannot_reindex_blocks_retiring_its_index_key(
    engine: Engine, make_service: Any
) -> None:
    svc = make_service(retire_after_seconds=10)
    _fill(engine, 3)
    # An encrypted, indexed column no job can take (its tenant is computed in Python): its
    # index values stay under the old key, and lookups on it would find nothing once that
    # key is retired.
    legacy = MetaData()
    Table(
        "ap_legacy",
        legacy,
        Column("id", Integer, primary_key=True),
        Column(
            "notes",
            EncryptedString(autopilot_proc.service, data_class="pii", tenant_id=lambda: "acme"),
        ),
    )
    registry = ColumnRegistry.from_metadata(Base)
    registry.unsupported.update(ColumnRegistry.from_metadata(legacy).unsupported)
    assert "ap_legacy.notes" in registry.unsupported
    svc.rotate_index_key()
    report = _step(engine, svc, offset=60, registry=registry)
    assert report.status == "blocked", report.as_dict()
    assert any(
        "retiring index key version(s) 1 is blocked: ap_legacy.notes is encrypted but the "
        "autopilot cannot re-index it" in r
        for r in report.reasons
    ), report.reasons
    assert svc.index_key_versions() == [(1, "active"), (2, "primary")]
