"""SIGKILL at random points, then rerun; and several workers with SKIP LOCKED."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select, text
from sqlalchemy.engine import Engine

from greenlang_crypto import parse_envelope
from greenlang_crypto.service import EncryptionService
from tests.integration.sqlalchemy._jobs import REPO, cli, fill_plaintext, job_args, people_table
from tests.integration.sqlalchemy._jobs import run_cli as _run

pytestmark = pytest.mark.integration

ROWS = 2000


@pytest.fixture
def people(pg_engine: Engine, service: EncryptionService, table_name: str) -> Any:
    md = MetaData()
    t = people_table(service, table_name, md)
    md.create_all(pg_engine)
    yield t
    md.drop_all(pg_engine)


def _check_all_rows(engine: Engine, people: Any, svc: EncryptionService, *, done: bool) -> None:
    """None lost, none encrypted twice, every row readable (plaintext only if not done)."""
    with engine.connect() as conn:
        raw = {i: bytes(v) for i, v in conn.execute(text(f"SELECT id, email FROM {people.name}"))}
        values = dict(conn.execute(select(people.c.id, people.c.email)).all())
    assert len(raw) == ROWS
    for i in range(ROWS):
        assert values[i] == f"user{i}@example.com"  # decrypts to the original, not an envelope
        if done or raw[i][:1] == b"\xfa":
            assert parse_envelope(raw[i]).key_version == svc.primary_version


def test_sigkill_at_random_points_then_rerun(
    pg_engine: Engine, pg_url: str, data_dir: Path, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, ROWS)
    argv = cli(
        data_dir,
        pg_url,
        "encrypt-column",
        *job_args(people.name, "--batch-size", "40", "--worker", "h1"),
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    rng = random.Random(1234)
    kills = 0
    for _ in range(20):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(rng.uniform(0.35, 0.9))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        _check_all_rows(pg_engine, people, service, done=False)
        with pg_engine.connect() as conn:
            left = conn.execute(
                text(f"SELECT count(*) FROM {people.name} WHERE get_byte(email, 0) <> 250")
            ).scalar()
        if not left:
            # Finished: start over from plaintext so every run is killed mid-job.
            with pg_engine.begin() as conn:
                conn.execute(text(f"DELETE FROM {people.name}"))
                conn.execute(text("DELETE FROM encryption.glc_job_ranges"))
            fill_plaintext(pg_engine, people.name, ROWS)
    assert kills >= 10
    result = _run(argv)
    assert result.returncode == 0, result.stderr
    _check_all_rows(pg_engine, people, service, done=True)
    again = _run(argv)
    assert again.returncode == 0 and '"written": 0' in again.stdout


def test_several_workers_split_ranges_with_skip_locked(
    pg_engine: Engine, pg_url: str, data_dir: Path, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, ROWS)
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    job_base = f"encrypt:{people.name}.email:p1"
    # Hold the planner's lock until all three workers wait on it, so that none can start late,
    # find the job finished and (rightly) begin a new run: the test is about sharing one run.
    gate = pg_engine.connect()
    gate.execute(text("SELECT pg_advisory_lock(hashtext(:j))"), {"j": job_base})
    gate.commit()
    procs = [
        subprocess.Popen(
            cli(
                data_dir,
                pg_url,
                "encrypt-column",
                *job_args(people.name, "--batch-size", "50", "--worker", f"w{i}", "--ranges", "8"),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(3)
    ]
    try:
        deadline = time.monotonic() + 60
        waiting = 0
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            waiting = gate.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND NOT granted AND database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())"
                )
            ).scalar_one()
            gate.commit()
            if waiting >= 3:
                break
            time.sleep(0.05)
        if all(p.poll() is None for p in procs):  # a worker that died is reported below
            assert waiting >= 3, "the workers never reached the planner"
    finally:
        gate.execute(text("SELECT pg_advisory_unlock(hashtext(:j))"), {"j": job_base})
        gate.commit()
        gate.close()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    _check_all_rows(pg_engine, people, service, done=True)
    with pg_engine.connect() as conn:
        ranges = conn.execute(
            text(
                "SELECT state, owner, processed FROM encryption.glc_job_ranges "
                "WHERE starts_with(job, :j)"
            ),
            {"j": f"encrypt:{people.name}.email:p1@"},
        ).all()
    assert len(ranges) == 8 and all(r.state == "done" for r in ranges)
    assert sum(r.processed for r in ranges) == ROWS  # each range processed exactly once
    assert len({r.owner for r in ranges}) >= 2  # the work was really shared


def test_cli_dry_run_status_and_reencrypt(
    pg_engine: Engine, pg_url: str, data_dir: Path, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, 50)
    dry = _run(cli(data_dir, pg_url, "encrypt-column", *job_args(people.name, "--dry-run")))
    assert dry.returncode == 0 and '"plaintext": 50' in dry.stdout
    assert _run(cli(data_dir, pg_url, "encrypt-column", *job_args(people.name))).returncode == 0
    service.rotate()
    re = _run(
        cli(
            data_dir,
            pg_url,
            "reencrypt",
            *job_args(people.name, "--retire", "--delete-stored-deks"),
        )
    )
    assert re.returncode == 0, re.stderr
    assert "minimum decryption version is now 2" in re.stdout
    st = _run(cli(data_dir, pg_url, "status"))
    assert st.returncode == 0 and f"encrypt:{people.name}.email:p1@" in st.stdout
