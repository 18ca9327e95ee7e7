"""Bulk jobs tell the truth under faults: real CLI processes against a real PostgreSQL.

* ``kill -9`` of a worker at a random batch, then an immediate rerun: the rerun either
  finishes every row (after taking the dead worker's ranges over when their lease expires)
  or exits non-zero; never 0 with rows left, and its printed counts match a direct SQL count.
* A rerun that may not wait long enough exits with ``JobIncompleteError`` and says when to
  retry; the dead worker's name takes its ranges back at once.
* A second worker started while the first is alive waits for it instead of exiting 0 early,
  and takes no range from it.
* ``written`` is exact under compare-and-swap retries forced by a concurrent writer process:
  a trigger logs every row update the job's sessions commit, and the two numbers must agree.
* A job survives a restart of its PostgreSQL (a private cluster) and exits 0 with every row
  done.

Short leases (``GLC_JOB_LEASE_SECONDS``) keep these fast.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError

from greenlang_crypto import parse_envelope
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy.migrate import ColumnJob
from tests.integration.sqlalchemy._jobs import REPO, cli, fill_plaintext, job_args, people_table
from tests.integration.sqlalchemy._jobs import spec as job_spec
from tests.pgcluster import pgbin, private_cluster

pytestmark = pytest.mark.integration

LEASE = "2"  # seconds; the lease every job process of these tests takes unless told otherwise


@pytest.fixture
def people(pg_engine: Engine, service: EncryptionService, table_name: str) -> Iterator[Any]:
    md = MetaData()
    t = people_table(service, table_name, md)
    md.create_all(pg_engine)
    # The job tables exist before any job runs, so the tests can watch them from the start.
    ColumnJob(pg_engine, service, job_spec(table_name)).ensure_tables()
    yield t
    md.drop_all(pg_engine)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), GLC_JOB_LEASE_SECONDS=LEASE)
    env.pop("GLC_AUDIT_URL", None)  # the data directory's own audit log
    env.update(extra)
    return env


def _run(argv: list[str], env: dict[str, str], timeout: float = 120) -> Any:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _summary(stdout: str) -> dict[str, Any] | None:
    """The JSON summary a job prints on stdout, if it printed one."""
    for line in stdout.splitlines():
        if line.startswith("{"):
            doc: dict[str, Any] = json.loads(line)
            return doc
    return None


def _scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def _left(engine: Engine, table: str, version: int = 1) -> int:
    """Rows not yet done, from the stored bytes: plaintext, or envelopes below ``version``.

    The key version is the envelope header's bytes 4-7, big-endian, so comparing them as
    bytes compares the numbers.
    """
    below = version.to_bytes(4, "big").hex()
    return int(
        _scalar(
            engine,
            f"SELECT count(*) FROM {table} WHERE email IS NOT NULL AND ("
            "substring(email FROM 1 FOR 1) <> '\\xfa'::bytea OR "
            f"substring(email FROM 5 FOR 4) < '\\x{below}'::bytea)",
        )
    )


def _processed(engine: Engine, prefix: str) -> int:
    """Rows the job's committed batches have read (its checkpoints in the job table)."""
    try:
        found = _scalar(
            engine,
            "SELECT COALESCE(sum(processed), 0) FROM encryption.glc_job_ranges "
            "WHERE starts_with(job, :p)",
            p=prefix,
        )
    except ProgrammingError:  # the job table does not exist yet
        return 0
    return int(found)


def _wait_for(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the job ended before {what}: rc={proc.returncode}\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def _encrypt_all(engine: Engine, url: str, data_dir: Path, table: str, rows: int) -> None:
    fill_plaintext(engine, table, rows)
    done = _run(cli(data_dir, url, "encrypt-column", *job_args(table)), _env())
    assert done.returncode == 0, done.stderr
    assert _left(engine, table) == 0


def _prepare(
    mode: str,
    engine: Engine,
    url: str,
    data_dir: Path,
    service: EncryptionService,
    table: str,
    rows: int,
) -> tuple[str, int]:
    """Fills ``table`` for a ``mode`` job; returns the job-name prefix and the target version."""
    if mode == "encrypt-column":
        fill_plaintext(engine, table, rows)
        return f"encrypt:{table}.email:", 1
    _encrypt_all(engine, url, data_dir, table, rows)
    service.rotate()
    return f"reencrypt:{table}.email:", service.primary_version


def _check_rerun(
    rerun: Any, engine: Engine, table: str, version: int, left_before: int
) -> dict[str, Any]:
    """The invariant of every rerun: never 0 with rows left, counts equal to the table's."""
    after = _left(engine, table, version)
    summary = _summary(rerun.stdout)
    where = f"rc={rerun.returncode}, rows left={after}\n{rerun.stdout}\n{rerun.stderr}"
    if rerun.returncode == 0:
        assert after == 0, "exit 0 with rows left: " + where
    assert "Traceback" not in rerun.stderr, where
    assert summary is not None, where
    assert summary["remaining"] == after, where
    # Nobody else wrote: every row this run changed was a row the killed run had left.
    assert summary["written"] == left_before - after, where
    return summary


@pytest.mark.parametrize("mode", ["encrypt-column", "reencrypt"])
def test_rerun_right_after_sigkill_never_exits_0_with_rows_left(
    mode: str,
    pg_engine: Engine,
    pg_url: str,
    data_dir: Path,
    service: EncryptionService,
    people: Any,
) -> None:
    rows, batch = 4000, 25
    prefix, version = _prepare(mode, pg_engine, pg_url, data_dir, service, people.name, rows)
    argv = cli(data_dir, pg_url, mode, *job_args(people.name, "--batch-size", str(batch)))
    seed = random.randrange(1 << 30)
    k = random.Random(seed).randrange(3, rows // batch // 2)
    victim = _start(argv, _env())
    try:
        _wait_for(f"batch {k}", lambda: _processed(pg_engine, prefix) >= k * batch, victim)
        victim.kill()
    finally:
        victim.kill()
        victim.communicate(timeout=30)
    left = _left(pg_engine, people.name, version)
    assert 0 < left < rows, f"seed {seed}: the kill did not land mid-job ({left} left)"

    started = time.monotonic()
    rerun = _run(argv, _env())
    _check_rerun(rerun, pg_engine, people.name, version, left)
    # The dead worker's 2 s lease is well within the default wait: the rerun took its
    # ranges over and finished the job.
    assert rerun.returncode == 0, f"seed {seed}: {rerun.stderr}"
    assert time.monotonic() - started < 60
    again = _run(argv, _env())
    assert again.returncode == 0, again.stderr
    summary = _summary(again.stdout)
    assert summary is not None and summary["written"] == 0 and summary["remaining"] == 0


def test_rerun_that_cannot_wait_for_a_lease_exits_with_job_incomplete(
    pg_engine: Engine, pg_url: str, data_dir: Path, service: EncryptionService, people: Any
) -> None:
    rows, batch = 3000, 25
    prefix, version = _prepare(
        "encrypt-column", pg_engine, pg_url, data_dir, service, people.name, rows
    )
    argv = cli(data_dir, pg_url, "encrypt-column", *job_args(people.name, "--batch-size", "25"))
    victim = _start(argv, _env(GLC_JOB_LEASE_SECONDS="30"))
    try:
        _wait_for("batch 10", lambda: _processed(pg_engine, prefix) >= 10 * batch, victim)
        victim.kill()
    finally:
        victim.kill()
        victim.communicate(timeout=30)
    left = _left(pg_engine, people.name, version)
    assert left > 0

    # The lease has most of its 30 s to run and this rerun waits 1 s for it.
    impatient = _run([*argv, "--wait-leases", "1"], _env())
    where = impatient.stdout + impatient.stderr
    assert impatient.returncode != 0, where
    assert "error: JobIncompleteError" in impatient.stderr, where
    assert "rerun after" in impatient.stderr and "Traceback" not in impatient.stderr, where
    summary = _summary(impatient.stdout)
    assert summary is not None, where
    assert summary["remaining"] == left == _left(pg_engine, people.name, version)
    assert summary["written"] == 0 and summary["scanned"] == 0

    # The dead worker's own name takes its ranges back at once and finishes the job.
    owner = f"{socket.gethostname()}:{victim.pid}"
    resumed = _run([*argv, "--worker", owner, "--wait-leases", "0"], _env())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _check_rerun(resumed, pg_engine, people.name, version, left)


def test_a_second_worker_waits_for_a_live_one_and_takes_nothing_from_it(
    pg_engine: Engine, pg_url: str, data_dir: Path, service: EncryptionService, people: Any
) -> None:
    rows, batch = 6000, 10
    prefix, _ = _prepare("encrypt-column", pg_engine, pg_url, data_dir, service, people.name, rows)

    def argv(worker: str) -> list[str]:
        args = job_args(people.name, "--batch-size", str(batch), "--worker", worker)
        return cli(data_dir, pg_url, "encrypt-column", *args)

    first = _start(argv("w1"), _env())
    try:
        _wait_for("w1's first batches", lambda: _processed(pg_engine, prefix) >= 20, first)
        second = _run(argv("w2"), _env())
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    one, two = _summary(out), _summary(second.stdout)
    assert one is not None and two is not None
    # w2 had nothing to claim while w1 kept renewing its lease: it waited for the run to end
    # and reports the exact rows left (none), not a guess.
    assert two["scanned"] == 0 and two["written"] == 0 and two["remaining"] == 0
    assert one["written"] == rows and one["remaining"] == 0
    with pg_engine.connect() as conn:
        ranges = conn.execute(
            text(
                "SELECT owner, state, processed FROM encryption.glc_job_ranges "
                "WHERE starts_with(job, :p)"
            ),
            {"p": prefix},
        ).all()
    assert [(r.owner, r.state, r.processed) for r in ranges] == [("w1", "done", rows)]
    assert _left(pg_engine, people.name) == 0


# A writer process of the application: it updates another column of rows just ahead of the
# job's committed checkpoint (so, often, rows the job has read and not yet written), one row
# per transaction, until the job's range is done or the stop file appears.
_WRITER = """
import os, random, sys
import psycopg

url, table, prefix, window, stop = sys.argv[1:]
rng = random.Random()
touched = 0
with psycopg.connect(url, autocommit=True) as conn:
    while not os.path.exists(stop):
        row = conn.execute(
            "SELECT max(COALESCE(last_pk, '-1')::bigint), bool_and(state = 'done') "
            "FROM encryption.glc_job_ranges WHERE starts_with(job, %s)",
            (prefix,),
        ).fetchone()
        if row[1]:
            break
        checkpoint = -1 if row[0] is None else row[0]
        for _ in range(25):
            pk = checkpoint + 1 + rng.randrange(int(window))
            conn.execute(f"UPDATE {table} SET tenant = tenant WHERE id = %s", (pk,))
            touched += 1
print(touched)
"""


@pytest.mark.parametrize("mode", ["encrypt-column", "reencrypt"])
def test_written_is_exact_under_compare_and_swap_retries(
    mode: str,
    pg_engine: Engine,
    pg_url: str,
    data_dir: Path,
    service: EncryptionService,
    people: Any,
    tmp_path: Path,
) -> None:
    rows, batch = 3000, 100
    prefix, version = _prepare(mode, pg_engine, pg_url, data_dir, service, people.name, rows)
    # Every row update a job session commits is logged in the same transaction (a rolled-back
    # batch logs nothing): the truth to compare `written` with.
    log = f"{people.name}_log"
    with pg_engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {log} (id BIGINT NOT NULL)"))
        conn.execute(
            text(
                f"CREATE FUNCTION {log}_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF current_setting('application_name') = 'glc-job' THEN "
                f"INSERT INTO {log} VALUES (NEW.id); END IF; RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                f"CREATE TRIGGER {log}_trg AFTER UPDATE ON {people.name} "
                f"FOR EACH ROW EXECUTE FUNCTION {log}_fn()"
            )
        )
    job_url = pg_url + ("&" if "?" in pg_url else "?") + "application_name=glc-job"
    stop = tmp_path / "stop-writer"
    writer = _start(
        [
            sys.executable,
            "-c",
            _WRITER,
            pg_url.replace("+psycopg", ""),
            people.name,
            prefix,
            str(2 * batch),
            str(stop),
        ],
        _env(),
    )
    try:
        job = _run(
            cli(data_dir, job_url, mode, *job_args(people.name, "--batch-size", str(batch))),
            _env(),
        )
    finally:
        stop.touch()
        w_out, w_err = writer.communicate(timeout=30)
    assert writer.returncode == 0, w_err
    assert int(w_out) > 0
    summary = _summary(job.stdout)
    assert summary is not None, job.stdout + job.stderr
    changed = _scalar(pg_engine, f"SELECT count(*) FROM {log}")
    distinct = _scalar(pg_engine, f"SELECT count(DISTINCT id) FROM {log}")
    assert summary["contended"] > 0, "the writer never raced the job; the test proves nothing"
    assert summary["written"] == changed == distinct, summary
    assert summary["written"] + summary["skipped"] + summary["quarantined"] == summary["scanned"]
    left = _left(pg_engine, people.name, version)
    assert summary["remaining"] == left
    assert (job.returncode == 0) == (left == 0 and summary["quarantined"] == 0), job.stderr
    if job.returncode == 0:
        assert changed == rows  # touching other columns never costs a row its encryption


def test_a_job_survives_a_postgresql_restart(data_dir: Path, service: EncryptionService) -> None:
    if pgbin() is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    rows, batch = 8000, 20
    with private_cluster() as cluster:
        url = cluster.url.replace("postgresql://", "postgresql+psycopg://", 1)
        engine = create_engine(url)
        try:
            md = MetaData()
            people_table(service, "people", md)
            md.create_all(engine)
            ColumnJob(engine, service, job_spec("people")).ensure_tables()
            fill_plaintext(engine, "people", rows)
            argv = cli(
                data_dir, url, "encrypt-column", *job_args("people", "--batch-size", str(batch))
            )
            job = _start(argv, _env())
            try:
                _wait_for(
                    "the first batches",
                    lambda: _processed(engine, "encrypt:people.email:") >= 20 * batch,
                    job,
                )
                engine.dispose()  # its pooled connection would only see the restart
                cluster.restart(5)
                out, err = job.communicate(timeout=180)
            finally:
                if job.poll() is None:
                    job.kill()
                    job.communicate()
            assert job.returncode == 0, out + err
            assert "Traceback" not in err
            summary = _summary(out)
            assert summary is not None
            assert summary["retries"] > 0, "the restart did not hit the job"
            assert summary["written"] == rows and summary["remaining"] == 0
            assert _left(engine, "people") == 0
            with engine.connect() as conn:
                stored = conn.execute(text("SELECT email FROM people")).scalars().all()
            assert len(stored) == rows
            assert {parse_envelope(bytes(v)).key_version for v in stored} == {1}
        finally:
            engine.dispose()
