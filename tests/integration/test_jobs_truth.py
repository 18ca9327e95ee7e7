"""Column jobs tell the truth: regression tests through the CLI against a real PostgreSQL.

* ``--phase 2`` after phase 1 rescans the whole column, refuses a plaintext row the application
  wrote meanwhile (exit 1, no CHECK constraint), and succeeds once that row is encrypted.
* A rerun after a failed run processes every row the failed run left: one whose worker raised
  mid-range, and one whose rows were all quarantined by a wrong option.
* ``reencrypt --retire`` with the audit sink down retires nothing and exits non-zero.

Each runs the ``greenlang-crypto`` command in a subprocess, as an operator would.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from tests.conftest import pg_private_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MAGIC = b"\xfa"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A private PostgreSQL database for this module (dropped afterwards)."""
    with pg_private_database("glc_jobs") as url:
        yield "postgresql+psycopg://" + url.removeprefix("postgresql://")


def _sql(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An initialized embedded default (local master key, SQLite key store and audit log)."""
    d = tmp_path / "keys"
    LocalKeyProvider(d).create_master_key()
    return d


@pytest.fixture
def table(pg_url: str) -> Iterator[str]:
    """A table whose ``email`` column a legacy application filled with plaintext."""
    name = f"people_{uuid.uuid4().hex[:8]}"
    _sql(pg_url, f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, email BYTEA)")
    yield name
    _sql(pg_url, f"DROP TABLE IF EXISTS {name}")


def _fill(url: str, table: str, first: int, count: int) -> None:
    _sql(
        url,
        f"INSERT INTO {table} (id, email) SELECT g, convert_to('user' || g || '@example.com', "
        "'UTF8') FROM generate_series(%s::bigint, %s::bigint) AS g",
        first,
        first + count - 1,
    )


def _cli(
    data_dir: Path, url: str, *args: str, env: dict[str, str] | None = None, debug: bool = False
) -> Any:
    argv = [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data_dir)]
    argv += ["--debug", "db", *args] if debug else ["db", *args]
    argv += ["--url", url]
    full = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    full.pop("GLC_AUDIT_URL", None)  # the data directory's own audit log, unless given
    full.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=full, check=False)


def _job(table: str, *extra: str) -> list[str]:
    return ["--table", table, "--column", "email", "--tenant", "acme", "--no-progress", *extra]


def _summary(stdout: str) -> dict[str, Any]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("{"))
    doc: dict[str, Any] = json.loads(line)
    return doc


def _plaintext_ids(url: str, table: str) -> list[int]:
    rows = _sql(url, f"SELECT id, email FROM {table} ORDER BY id")
    return [int(i) for i, v in rows if v is not None and not bytes(v).startswith(MAGIC)]


def _has_check(url: str, table: str) -> bool:
    rows = _sql(
        url,
        "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) "
        "AND conname = 'glc_email_is_envelope'",
        table,
    )
    return bool(rows)


def test_phase_2_after_phase_1_rescans_and_refuses_late_plaintext(
    pg_url: str, data_dir: Path, table: str
) -> None:
    _fill(pg_url, table, 0, 30)
    one = _cli(data_dir, pg_url, "encrypt-column", *_job(table))
    assert one.returncode == 0, one.stderr
    assert _summary(one.stdout)["written"] == 30
    # The application, still in phase 1, writes one more plaintext value.
    _fill(pg_url, table, 1000, 1)

    two = _cli(data_dir, pg_url, "encrypt-column", *_job(table, "--phase", "2"))
    assert two.returncode == 1, two.stdout + two.stderr
    summary = _summary(two.stdout)
    # The whole column was scanned again; the late plaintext row was found and left alone.
    assert summary["scanned"] == 31
    assert summary["quarantined"] == 1 and summary["remaining"] == 1
    assert "1 row(s) remain" in two.stderr
    assert _plaintext_ids(pg_url, table) == [1000]
    assert not _has_check(pg_url, table)
    assert "user1000@example.com" not in two.stdout + two.stderr

    # Phase 1 again encrypts it; then phase 2 passes and keeps plaintext out for good.
    again = _cli(data_dir, pg_url, "encrypt-column", *_job(table))
    assert again.returncode == 0, again.stderr
    assert _summary(again.stdout)["written"] == 1
    final = _cli(data_dir, pg_url, "encrypt-column", *_job(table, "--phase", "2"))
    assert final.returncode == 0, final.stderr
    assert _summary(final.stdout)["scanned"] == 31
    assert _plaintext_ids(pg_url, table) == [] and _has_check(pg_url, table)
    import psycopg

    with pytest.raises(psycopg.errors.CheckViolation):
        _sql(pg_url, f"INSERT INTO {table} (id, email) VALUES (2000, 'plain'::bytea)")


def test_a_rerun_after_a_worker_failed_mid_range_processes_every_row(
    pg_url: str, data_dir: Path, table: str
) -> None:
    _fill(pg_url, table, 0, 50)
    # A wrong option makes the worker fail after it claimed the range.
    bad = _cli(data_dir, pg_url, "encrypt-column", *_job(table, "--index-column", "no_such"))
    assert bad.returncode != 0
    assert "user1@example.com" not in bad.stdout + bad.stderr  # hide_parameters
    # The failed worker gave its range back at once (no waiting for the lease).
    states = _sql(
        pg_url,
        "SELECT state, owner FROM encryption.glc_job_ranges WHERE job LIKE %s",
        f"encrypt:{table}.email:%",
    )
    assert states and all(s == "pending" and o is None for s, o in states)
    assert len(_plaintext_ids(pg_url, table)) == 50

    fixed = _cli(data_dir, pg_url, "encrypt-column", *_job(table))
    assert fixed.returncode == 0, fixed.stderr
    summary = _summary(fixed.stdout)
    assert summary["scanned"] == 50 and summary["written"] == 50
    assert summary["remaining"] == 0
    assert _plaintext_ids(pg_url, table) == []


def test_a_corrected_rerun_after_a_run_that_quarantined_everything(
    pg_url: str, data_dir: Path, table: str
) -> None:
    # Binary values (not UTF-8): a run with the default --kind str quarantines every row and
    # finishes its range; the corrected run (--kind bytes) must scan them all again.
    _sql(
        pg_url,
        f"INSERT INTO {table} (id, email) SELECT g, decode(lpad(to_hex(g), 2, '0') || 'ff00c3', "
        "'hex') FROM generate_series(1, 50) AS g",
    )
    wrong = _cli(data_dir, pg_url, "encrypt-column", *_job(table))
    assert wrong.returncode == 1, wrong.stderr
    assert _summary(wrong.stdout)["quarantined"] == 50
    assert len(_plaintext_ids(pg_url, table)) == 50

    right = _cli(data_dir, pg_url, "encrypt-column", *_job(table, "--kind", "bytes"))
    assert right.returncode == 0, right.stderr
    summary = _summary(right.stdout)
    assert summary["scanned"] == 50 and summary["written"] == 50 and summary["remaining"] == 0
    assert _plaintext_ids(pg_url, table) == []


def _service(data_dir: Path) -> EncryptionService:
    return EncryptionService(EncryptionServiceConfig(data_dir=data_dir, keyring_refresh_seconds=0))


def _keystore(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(data_dir / "keystore.db")
    try:
        return list(db.execute(sql).fetchall())
    finally:
        db.close()


def test_retire_with_the_audit_sink_down_at_start_changes_nothing(
    pg_url: str, data_dir: Path, table: str
) -> None:
    _fill(pg_url, table, 0, 20)
    assert _cli(data_dir, pg_url, "encrypt-column", *_job(table)).returncode == 0
    svc = _service(data_dir)
    svc.rotate()
    svc.close()
    before = _sql(pg_url, f"SELECT id, email FROM {table} ORDER BY id")
    down = {"GLC_AUDIT_URL": "postgresql://nobody@127.0.0.1:1/nowhere"}
    run = _cli(
        data_dir,
        pg_url,
        "reencrypt",
        *_job(table, "--retire", "--delete-stored-deks"),
        env=down,
    )
    assert run.returncode != 0
    assert "AuditSinkUnavailableError" in run.stderr
    assert _sql(pg_url, f"SELECT id, email FROM {table} ORDER BY id") == before
    assert _keystore(data_dir, "SELECT min_decryption_version FROM glc_keyring") == [(1,)]
    assert _keystore(data_dir, "SELECT count(*) FROM glc_deks WHERE key_version = 1") == [(1,)]


def test_retire_with_the_audit_sink_down_after_the_job_retires_nothing(
    pg_url: str, data_dir: Path, table: str
) -> None:
    _fill(pg_url, table, 0, 3000)
    assert _cli(data_dir, pg_url, "encrypt-column", *_job(table)).returncode == 0
    svc = _service(data_dir)
    svc.rotate()
    svc.close()
    argv = [
        sys.executable,
        "-m",
        "greenlang_crypto",
        "--data-dir",
        str(data_dir),
        "db",
        "reencrypt",
        *_job(table, "--retire", "--delete-stored-deks", "--batch-size", "10"),
        "--url",
        pg_url,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    env.pop("GLC_AUDIT_URL", None)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    audit_db = data_dir / "audit.db"
    locker: sqlite3.Connection | None = None
    try:
        # Wait for the job's intent record, then take the audit database's write lock, as a
        # full disk or a stuck writer would: the job may finish, the retirement must not run.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                probe = sqlite3.connect(audit_db, timeout=0.1)
                found = probe.execute(
                    "SELECT 1 FROM glc_audit WHERE action = 'db_reencrypt' AND outcome = 'intent'"
                ).fetchone()
                probe.close()
            except sqlite3.OperationalError:
                found = None
            if found:
                locker = sqlite3.connect(audit_db, timeout=5, isolation_level=None)
                locker.execute("BEGIN IMMEDIATE")
                break
            time.sleep(0.01)
        assert locker is not None, "the job never wrote its intent record"
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if locker is not None:
            locker.execute("ROLLBACK")
            locker.close()
    assert proc.returncode != 0, out + err
    assert "AuditSinkUnavailableError" in err
    assert "minimum decryption version is now" not in out
    # Nothing retired: the minimum stays, the version-1 DEK is still stored, and every row
    # still decrypts in a fresh service.
    assert _keystore(data_dir, "SELECT min_decryption_version FROM glc_keyring") == [(1,)]
    assert _keystore(data_dir, "SELECT count(*) FROM glc_deks WHERE key_version = 1") == [(1,)]
    fresh = _service(data_dir)
    try:
        rows = _sql(pg_url, f"SELECT id, email FROM {table} WHERE id IN (0, 1, 2999)")
        from greenlang_crypto.context import EncryptionContext
        from greenlang_crypto.sqlalchemy._common import location_aad

        ctx = EncryptionContext(tenant_id="acme", data_class="pii")
        for i, value in rows:
            env_bytes = bytes(value)
            assert parse_envelope(env_bytes).key_version in (1, 2)
            aad = location_aad(table, "email")
            assert fresh.decrypt(env_bytes, ctx, associated_data=aad) == (
                f"user{i}@example.com".encode()
            )
    finally:
        fresh.close()
    # The outcome the sink could not take was kept to be replayed, not lost.
    pending = list(data_dir.glob("audit.db.deadletter.pending"))
    assert pending and b"db_reencrypt" in pending[0].read_bytes()


def test_a_failing_batch_never_prints_its_parameters(
    pg_url: str, data_dir: Path, table: str
) -> None:
    # A constraint the ciphertext violates makes the job's UPDATE fail after rows were read
    # and encrypted: the error the CLI prints must not carry the statement's parameters.
    _fill(pg_url, table, 0, 10)
    _sql(pg_url, f"ALTER TABLE {table} ADD CONSTRAINT short CHECK (octet_length(email) < 40)")
    # With --debug the traceback is printed, so the test sees everything an error can show.
    run = _cli(data_dir, pg_url, "encrypt-column", *_job(table), debug=True)
    assert run.returncode != 0
    assert "CheckViolation" in run.stderr or "check constraint" in run.stderr
    assert "parameters hidden" in run.stderr
    # (PostgreSQL's own DETAIL shows the failing row, which holds the new ciphertext only.)
    assert not [i for i in range(10) if f"user{i}@example.com" in run.stderr]
    assert len(_plaintext_ids(pg_url, table)) == 10  # the batch rolled back


def test_retire_through_a_job_is_audited_once_with_intent_and_outcome(
    pg_url: str, data_dir: Path, table: str
) -> None:
    _fill(pg_url, table, 0, 20)
    assert _cli(data_dir, pg_url, "encrypt-column", *_job(table)).returncode == 0
    svc = _service(data_dir)
    svc.rotate()
    svc.close()
    run = _cli(data_dir, pg_url, "reencrypt", *_job(table, "--retire", "--delete-stored-deks"))
    assert run.returncode == 0, run.stderr
    assert _keystore(data_dir, "SELECT min_decryption_version FROM glc_keyring") == [(2,)]
    db = sqlite3.connect(data_dir / "audit.db")
    try:
        rows = db.execute(
            "SELECT action, outcome, key_version, details FROM glc_audit "
            "WHERE action IN ('db_reencrypt', 'key_retire') ORDER BY seq"
        ).fetchall()
    finally:
        db.close()
    assert [(a, o) for a, o, _, _ in rows] == [
        ("db_reencrypt", "intent"),
        ("key_retire", "intent"),
        ("key_retire", "success"),
        ("db_reencrypt", "success"),
    ]
    retire = json.loads(rows[2][3])
    assert rows[2][2] == 2 and retire["via"] == "db_reencrypt"
    assert retire["delete_stored_deks"] is True
    summary = json.loads(rows[3][3])
    assert summary["written"] == 20 and summary["remaining"] == 0
    assert _cli(data_dir, pg_url, "encrypt-column", *_job(table, "--dry-run")).returncode == 0
