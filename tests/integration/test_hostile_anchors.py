"""Audit anchors against a PostgreSQL audit log whose tail an attacker cuts.

Whoever can write the audit database can delete its last records and re-point the head, so
the HMAC chain alone still verifies. The anchors configured in ``$GLC_AUDIT_ANCHORS`` hold
checkpoints outside the database: every writer (the CLI, a column job, the API stack)
publishes to them, ``audit verify --checkpoint-file`` reads a copy of the anchor file, and
``verify`` (compliance) fails when the log no longer reaches its checkpoints, or when
records were written that no checkpoint covers. Real processes, real PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
psycopg = pytest.importorskip("psycopg")

SKIPS = [
    "--allow-skip",
    "data.columns_encrypted",
    *("--allow-skip", "infra.kms_rotation"),
    *("--allow-skip", "infra.deletion_window"),
    *("--allow-skip", "infra.multi_region"),
    *("--allow-skip", "infra.alarms"),
]


class Site:
    """A data directory whose audit log is in PostgreSQL, anchored to a file elsewhere."""

    def __init__(self, tmp_path: Path, audit_url: str) -> None:
        self.data = tmp_path / "data"
        self.anchor = tmp_path / "offsite" / "audit.anchor"
        self.audit_url = audit_url
        self.cwd = tmp_path  # no terraform/ here: those controls are skipped, with leave

    def env(self, *, anchors: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GLC_AUDIT")}
        env["GLC_DATA_DIR"] = str(self.data)
        env["GLC_AUDIT_URL"] = self.audit_url
        if anchors:
            env["GLC_AUDIT_ANCHORS"] = f"file://{self.anchor}"
        return env

    def cli(self, *args: str, anchors: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "greenlang_crypto", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env(anchors=anchors),
            cwd=self.cwd,
            check=False,
        )

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.audit_url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def last_seq(self) -> int:
        if self.sql("SELECT to_regclass('encryption.glc_audit')")[0][0] is None:
            return 0  # nothing written yet
        return int(self.sql("SELECT COALESCE(max(seq), 0) FROM encryption.glc_audit")[0][0])

    def anchored_seq(self) -> int:
        lines = self.anchor.read_text().splitlines() if self.anchor.exists() else []
        return max((json.loads(line)["seq"] for line in lines if line.strip()), default=0)

    def compliance(self, *extra: str, anchors: bool = True) -> tuple[int, dict[str, Any]]:
        run = self.cli("verify", "--json", *SKIPS, *extra, anchors=anchors)
        assert run.returncode in (0, 1), run.stderr
        doc = json.loads(run.stdout)
        by = {c["control"]: c for c in doc["controls"]}
        return run.returncode, by["audit.chain"]


@pytest.fixture
def site(tmp_path: Path, pg_database: str) -> Site:
    """A site whose audit log is a database of the test's own."""
    s = Site(tmp_path, pg_database)
    init = s.cli("init")
    assert init.returncode == 0, init.stderr
    return s


def test_cli_rotations_are_anchored_and_a_cut_tail_fails_both_verifications(
    site: Site, tmp_path: Path
) -> None:
    for _ in range(3):
        rotated = site.cli("keys", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        # Each CLI writer publishes the head it wrote before it exits.
        assert site.anchored_seq() == site.last_seq()
    copy = tmp_path / "collected" / "anchor-copy.jsonl"
    copy.parent.mkdir()
    shutil.copy(site.anchor, copy)
    # Untouched: both verifications pass, the copy alone (no $GLC_AUDIT_ANCHORS) included.
    ok = site.cli("audit", "verify", "--checkpoint-file", str(copy), anchors=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    code, control = site.compliance()
    assert code == 0 and control["status"] == "pass", control
    # The attack: delete the last rotation's records and re-point the head at what is left.
    last = site.last_seq()
    seq, mac = site.sql("SELECT seq, hmac FROM encryption.glc_audit WHERE seq = %s", (last - 2,))[0]
    site.sql("DELETE FROM encryption.glc_audit WHERE seq > %s", (seq,))
    site.sql(
        "UPDATE encryption.glc_audit_meta SET value = %s WHERE name = 'head'", (f"{seq}:{mac}",)
    )
    # The chain alone cannot tell: that is what the anchors are for.
    blind = site.cli("audit", "verify", anchors=False)
    assert blind.returncode == 0, blind.stdout + blind.stderr
    cut = site.cli("audit", "verify", "--checkpoint-file", str(copy), anchors=False)
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "truncated" in cut.stdout and f"seq {last}" in cut.stdout
    code, control = site.compliance()
    assert code == 1 and control["status"] == "fail", control
    assert "truncated" in control["detail"]


def test_records_no_writer_anchored_fail_the_compliance_control(site: Site) -> None:
    rotated = site.cli("keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    anchored = site.anchored_seq()
    assert anchored == site.last_seq()
    # A writer without the anchors (an old build, a misconfigured host) adds records.
    unanchored = site.cli("keys", "rotate", anchors=False)
    assert unanchored.returncode == 0, unanchored.stderr
    assert site.anchored_seq() == anchored < site.last_seq()
    code, control = site.compliance("--anchor-grace", "0")
    assert code == 1 and control["status"] == "fail", control
    assert (
        "unanchored" in control["detail"]
        and f"{anchored + 1}..{site.last_seq()}" in (control["detail"])
    )
    # A live writer's next checkpoint may still be on its way: within the grace, a pass.
    code, control = site.compliance()
    assert code == 0 and control["status"] == "pass", control
    # The next anchored writer covers the whole head again.
    assert site.cli("keys", "rotate").returncode == 0
    code, control = site.compliance("--anchor-grace", "0")
    assert code == 0 and control["status"] == "pass", control


def test_every_writer_publishes_to_the_configured_anchors(
    site: Site, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A column job: its intent and outcome records are anchored when it closes its log.
    table = f"hostile_anchor_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, email BYTEA)")
        conn.execute(
            f"INSERT INTO {table} SELECT g, convert_to('user' || g || '@example.com', 'UTF8') "
            "FROM generate_series(1, 50) AS g"
        )
    try:
        before = site.last_seq()
        job = site.cli(
            "db", "encrypt-column", "--url", pg_dsn, "--table", table, "--column", "email",
            "--tenant", "acme", "--no-progress",
        )  # fmt: skip
        assert job.returncode == 0, job.stdout + job.stderr
        assert site.last_seq() > before
        assert site.anchored_seq() == site.last_seq()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    # The API's stack, built without naming any anchor.
    pytest.importorskip("fastapi")
    from greenlang_crypto.api.app import build_stack
    from greenlang_crypto.config import EncryptionServiceConfig

    for key, value in site.env().items():
        monkeypatch.setenv(key, value)
    stack = build_stack(EncryptionServiceConfig(data_dir=site.data), audit_url=site.audit_url)
    stack.audit.record("key_rotate", actor="api-test")
    stack.close()
    assert site.anchored_seq() == site.last_seq()
