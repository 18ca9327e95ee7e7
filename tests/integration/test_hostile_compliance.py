"""``greenlang-crypto verify`` cannot be passed by checking less, or by counting less.

A control that was skipped (no ``--db``, no Terraform module) fails the run unless
``--allow-skip`` names it; a column full of plaintext is counted exactly (not up to the
evidence's sample of ids); and the values the column check reads never reach a log, even
with SQLAlchemy's engine logger at DEBUG. Real PostgreSQL, real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto.compliance.verify import ColumnSpec, run_verification
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.service import EncryptionService
from tests.logcapture import capture_debug_logs

pytestmark = pytest.mark.integration
psycopg = pytest.importorskip("psycopg")

INFRA = ["infra.kms_rotation", "infra.deletion_window", "infra.multi_region", "infra.alarms"]
PLAINTEXT_ROWS = 12_000


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """An initialized data directory with an audit log (one audited rotation)."""
    d = tmp_path / "data"
    for args in (["init"], ["keys", "rotate"]):
        res = _glc(tmp_path, d, *args)
        assert res.returncode == 0, res.stderr
    return d


def _glc(cwd: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLC_AUDIT")}
    env["GLC_DATA_DIR"] = str(data)
    return subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,  # no terraform/ below it: the infrastructure controls are skipped
        check=False,
    )


def _allow(*controls: str) -> list[str]:
    return [arg for c in controls for arg in ("--allow-skip", c)]


def test_a_skipped_control_fails_the_run_unless_allowed(tmp_path: Path, data: Path) -> None:
    res = _glc(tmp_path, data, "verify", "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["summary"]["fail"] == 0 and doc["summary"]["skipped"] == 5
    assert sorted(doc["summary"]["skipped_not_allowed"]) == sorted(
        ["data.columns_encrypted", *INFRA]
    )
    assert doc["summary"]["ok"] is False
    text = _glc(tmp_path, data, "verify")
    assert text.returncode == 1
    assert "incomplete: " in text.stdout and "data.columns_encrypted" in text.stdout
    # Allowing some is not allowing all.
    some = _glc(tmp_path, data, "verify", "--json", *_allow("data.columns_encrypted"))
    assert some.returncode == 1
    assert sorted(json.loads(some.stdout)["summary"]["skipped_not_allowed"]) == sorted(INFRA)
    every = _glc(tmp_path, data, "verify", "--json", *_allow("data.columns_encrypted", *INFRA))
    assert every.returncode == 0, every.stdout + every.stderr
    assert json.loads(every.stdout)["summary"]["ok"] is True
    # A control that does not exist is a usage error, not a silent no-op.
    bogus = _glc(tmp_path, data, "verify", *_allow("audit.chian"))
    assert bogus.returncode == 2
    assert bogus.stderr.startswith("error: ") and bogus.stderr.count("\n") == 1
    assert "audit.chian" in bogus.stderr


@pytest.fixture
def users(pg_dsn: str, data: Path) -> Iterator[tuple[str, str]]:
    """12,000 plaintext emails (a marker in each), 50 envelopes and 5 NULLs."""
    table = f"hostile_users_{uuid.uuid4().hex[:8]}"
    marker = f"glc-hostile-verify-{uuid.uuid4().hex[:8]}"
    with EncryptionService.init_local(data) as svc:
        envelopes = [
            svc.encrypt(f"sealed{i}@example.com".encode(), EncryptionContext("acme", "pii"))
            for i in range(50)
        ]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, email BYTEA)")
        conn.execute(
            f"INSERT INTO {table} SELECT g, convert_to(%s || '-' || g || '@example.com', "
            "'UTF8') FROM generate_series(1, %s) AS g",
            (marker, PLAINTEXT_ROWS),
        )
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} VALUES (%s, %s)",
                [(100_000 + i, env) for i, env in enumerate(envelopes)],
            )
        conn.execute(
            f"INSERT INTO {table} SELECT g, NULL FROM generate_series(200000, 200004) AS g"
        )
    yield table, marker
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_plaintext_is_counted_exactly(
    tmp_path: Path, data: Path, pg_dsn: str, users: tuple[str, str]
) -> None:
    table, marker = users
    res = _glc(
        tmp_path, data, "verify", "--json", "--db", pg_dsn, "--column", f"{table}.email",
        *_allow(*INFRA),
    )  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    by = {c["control"]: c for c in json.loads(res.stdout)["controls"]}
    control = by["data.columns_encrypted"]
    assert control["status"] == "fail"
    assert control["evidence"]["plaintext_counts"] == {f"{table}.email": PLAINTEXT_ROWS}
    assert f"{PLAINTEXT_ROWS} plaintext value(s)" in control["detail"]
    assert f"scanned {PLAINTEXT_ROWS + 55} values" in control["detail"]
    # The ids listed are a sample, the first ones in key order.
    assert control["evidence"]["plaintext_rows"] == {
        f"{table}.email": [str(i) for i in range(1, 101)]
    }
    assert marker not in res.stdout and marker not in res.stderr


def test_the_column_check_logs_no_value(
    data: Path, pg_dsn: str, users: tuple[str, str], tmp_path: Path
) -> None:
    table, marker = users
    loggers = ["", "sqlalchemy.engine", "sqlalchemy.pool", "psycopg", "greenlang_crypto"]
    with capture_debug_logs(loggers) as logs, EncryptionService.init_local(data) as svc:
        report: Any = run_verification(
            svc,
            db_url=pg_dsn,
            columns=[ColumnSpec.parse(f"{table}.email")],
            terraform_dir=tmp_path / "no-terraform",
        )
    by = {r.control: r for r in report.results}
    assert by["data.columns_encrypted"].evidence["plaintext_counts"] == {
        f"{table}.email": PLAINTEXT_ROWS
    }
    captured = logs.getvalue()
    assert "sqlalchemy" in captured  # the capture did see the engine at DEBUG
    assert marker not in captured
    assert marker not in report.to_json() and marker not in report.to_text()
