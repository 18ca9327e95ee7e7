"""``greenlang-crypto audit verify --anchor/--checkpoint/--checkpoint-file``.

The attacker here can write the data directory: they cut the log's tail, rewrite its head and
delete the default anchor file beside it, so a plain ``audit verify`` has nothing left to
compare with. A checkpoint kept elsewhere (another anchor file, or lines the stdout anchor
shipped to a log collector) still exposes the truncation.
"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from greenlang_crypto.audit import AuditLog, FileAnchor, SqliteAuditSink, StreamAnchor
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

REPO = Path(__file__).resolve().parents[3]


def _cli(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    full.pop("GLC_AUDIT_URL", None)
    full.pop("GLC_AUDIT_ANCHORS", None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data), "audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full,
        check=False,
    )


@pytest.fixture
def attacked(tmp_path: Path) -> tuple[Path, Path, str]:
    """A log anchored to the default file, a second file and a shipped stream; then cut."""
    data = tmp_path / "data"
    LocalKeyProvider(data).create_master_key()
    offsite = tmp_path / "offsite" / "audit.anchor"
    shipped = io.StringIO()
    sink = SqliteAuditSink(data / "audit.db")
    anchors = [FileAnchor(data / "audit.db.anchor"), FileAnchor(offsite), StreamAnchor(shipped)]
    audit = AuditLog(sink, start_thread=False, anchors=anchors)
    svc = EncryptionService.init_local(data)
    audit.attach(svc)
    for i in range(6):
        audit.record("key_rotate", actor="op", details={"i": i})
    audit.close()
    svc.close()
    lines = shipped.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glc-audit-checkpoint ")
    ok = _cli(data, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The attack: drop the last two records, re-point the head, remove the local anchor.
    con = sqlite3.connect(data / "audit.db")
    with con:
        seq, mac = con.execute("SELECT seq, hmac FROM glc_audit WHERE seq = 4").fetchone()
        con.execute("DELETE FROM glc_audit WHERE seq > 4")
        con.execute(f"UPDATE glc_audit_meta SET value = '{seq}:{mac}' WHERE name = 'head'")
    con.close()
    (data / "audit.db.anchor").unlink()
    return data, offsite, lines[0]


def test_without_an_outside_checkpoint_the_cut_log_passes(
    attacked: tuple[Path, Path, str],
) -> None:
    # What the threat model says: the local anchor went with the data directory.
    data, _, _ = attacked
    assert _cli(data, "verify").returncode == 0


def test_a_shipped_checkpoint_line_exposes_the_cut(attacked: tuple[Path, Path, str]) -> None:
    data, _, line = attacked
    run = _cli(data, "verify", "--checkpoint", line)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED" in run.stdout and "seq 6" in run.stdout


def test_a_shipped_log_file_exposes_the_cut(
    attacked: tuple[Path, Path, str], tmp_path: Path
) -> None:
    data, _, line = attacked
    collected = tmp_path / "collector.log"
    collected.write_text(
        f"Dec  2 02:00:00 host app[1]: started\nDec  2 02:00:01 host app[1]: {line}\n"
        "Dec  2 02:00:02 host app[1]: other news\n"
    )
    run = _cli(data, "verify", "--checkpoint-file", str(collected))
    assert run.returncode == 1, run.stdout + run.stderr


def test_another_anchor_exposes_the_cut(attacked: tuple[Path, Path, str]) -> None:
    data, offsite, _ = attacked
    run = _cli(data, "verify", "--anchor", f"file://{offsite}")
    assert run.returncode == 1, run.stdout + run.stderr
    via_env = _cli(data, "verify", env={"GLC_AUDIT_ANCHORS": f"file://{offsite}"})
    assert via_env.returncode == 1


def test_a_forged_or_unreadable_checkpoint_is_refused(attacked: tuple[Path, Path, str]) -> None:
    data, _, line = attacked
    assert _cli(data, "verify", "--checkpoint", "not a checkpoint").returncode == 2
    forged = line.replace('"seq": 6', '"seq": 4').replace('"seq":6', '"seq":4')
    assert forged != line
    run = _cli(data, "verify", "--checkpoint", forged)
    assert run.returncode == 1 and "bad MAC" in run.stdout


def test_an_untouched_log_verifies_against_the_same_checkpoints(tmp_path: Path) -> None:
    data = tmp_path / "data"
    LocalKeyProvider(data).create_master_key()
    shipped = io.StringIO()
    audit = AuditLog(
        SqliteAuditSink(data / "audit.db"),
        start_thread=False,
        anchors=[StreamAnchor(shipped)],
    )
    svc = EncryptionService.init_local(data)
    audit.attach(svc)
    audit.record("key_rotate", actor="op")
    audit.close()
    svc.close()
    run = _cli(data, "verify", "--checkpoint", shipped.getvalue().strip())
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.integration
def test_a_log_with_no_anchor_at_all_says_so(pg_database: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    LocalKeyProvider(data).create_master_key()
    # A PostgreSQL log has no file to anchor beside: without --anchor, verify warns.
    run = _cli(data, "--audit-url", pg_database, "verify")
    assert "no audit anchor configured" in run.stderr
    assert run.returncode == 1  # and an empty log is a failure, not "ok: 0 records"
