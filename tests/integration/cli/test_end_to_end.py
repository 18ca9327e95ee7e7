"""The CLI end to end on the embedded default, in a subprocess like a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.clirun import run


def test_cli_round_trip_rotate_and_status(tmp_path: Path) -> None:
    assert run(tmp_path, "init").returncode == 0
    ctx = ["--tenant", "acme", "--data-class", "pii"]
    enc = run(tmp_path, "encrypt", *ctx, stdin=b"alice@example.com")
    # A stream (0xFB) by default; `--envelope` writes a single-shot envelope (0xFA).
    assert enc.returncode == 0 and enc.stdout[:1] == b"\xfb"
    assert run(tmp_path, "keys", "rotate").returncode == 0
    dec = run(tmp_path, "decrypt", *ctx, stdin=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == b"alice@example.com"
    bad = run(tmp_path, "decrypt", "--tenant", "evil", "--data-class", "pii", stdin=enc.stdout)
    assert bad.returncode == 2 and b"DecryptionError" in bad.stderr
    assert b"alice" not in bad.stderr
    listing = json.loads(run(tmp_path, "keys", "list", "--json").stdout)
    assert [v["state"] for v in listing] == ["active", "primary"]
    rewrap = run(tmp_path, "keys", "rewrap")
    assert rewrap.returncode == 0 and b"rewrapped 1" in rewrap.stdout
    assert run(tmp_path, "decrypt", *ctx, stdin=enc.stdout).stdout == b"alice@example.com"
    status = json.loads(run(tmp_path, "status").stdout)
    assert status["provider_ok"] and status["primary_version"] == 2


def test_cli_files(tmp_path: Path) -> None:
    run(tmp_path, "init")
    src, envf, out = tmp_path / "in.bin", tmp_path / "in.enc", tmp_path / "out.bin"
    src.write_bytes(os.urandom(100_000))
    ctx = ["--tenant", "t", "--data-class", "blob", "--context", "purpose=backup"]
    assert (
        run(
            tmp_path, "encrypt", *ctx, "-i", str(src), "-o", str(envf), "--key-reference", "inline"
        ).returncode
        == 0
    )
    assert run(tmp_path, "decrypt", *ctx, "-i", str(envf), "-o", str(out)).returncode == 0
    assert out.read_bytes() == src.read_bytes()
    assert (
        run(
            tmp_path, "decrypt", "--tenant", "t", "--data-class", "blob", "-i", str(envf)
        ).returncode
        == 2
    )


def test_cli_without_init_fails_cleanly(tmp_path: Path) -> None:
    r = run(tmp_path, "encrypt", "--tenant", "t", "--data-class", "x", stdin=b"v")
    assert r.returncode == 2 and b"ConfigurationError" in r.stderr


def test_cli_key_changes_are_audited_and_fail_closed(tmp_path: Path) -> None:
    import sqlite3

    assert run(tmp_path, "init").returncode == 0
    assert run(tmp_path, "keys", "rotate").returncode == 0
    audit_db = tmp_path / "data" / "audit.db"
    # No database and no Terraform here: those controls are skipped, which must be said.
    skipped = ["data.columns_encrypted", "infra.kms_rotation", "infra.deletion_window"]
    skipped += ["infra.multi_region", "infra.alarms"]
    allow = [a for c in skipped for a in ("--allow-skip", c)]
    verify = run(tmp_path, "verify", "--json", "--terraform", str(tmp_path / "none"), *allow)
    assert verify.returncode == 0, verify.stderr
    doc = json.loads(verify.stdout)
    by = {c["control"]: c for c in doc["controls"]}
    assert by["audit.chain"]["status"] == "pass", by["audit.chain"]
    assert verify.returncode == 0
    # Tamper with one record: verify names the broken chain and exits non-zero.
    with sqlite3.connect(audit_db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        table = next(t for t in tables if "meta" not in t)
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        target = "outcome" if "outcome" in cols else cols[-1]
        conn.execute(f"UPDATE {table} SET {target} = 'forged' WHERE rowid = 1")
    tampered = run(tmp_path, "verify", "--json", "--terraform", str(tmp_path / "none"))
    by = {c["control"]: c for c in json.loads(tampered.stdout)["controls"]}
    assert tampered.returncode == 1 and by["audit.chain"]["status"] == "fail"
    # Audit sink down: the rotation is refused and the keyring does not change.
    before = json.loads(run(tmp_path, "keys", "list", "--json").stdout)
    env_down = dict(os.environ, GLC_DATA_DIR=str(tmp_path / "data"))
    # A path under a regular file can never be created: the sink is down.
    env_down["GLC_AUDIT_URL"] = f"sqlite:///{audit_db}/audit.db"
    down = subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", "keys", "rotate"],
        capture_output=True,
        env=env_down,
        timeout=60,
        check=False,
    )
    assert down.returncode == 3 and b"AuditSinkUnavailableError" in down.stderr
    assert json.loads(run(tmp_path, "keys", "list", "--json").stdout) == before


def test_readme_run_demo(tmp_path: Path) -> None:
    # The README's run command (make run -> scripts/demo.sh), without the final serve step.
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, GLC_DATA_DIR=str(tmp_path / "demo"), GLC_DEMO_NO_SERVE="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    r = subprocess.run(
        ["bash", str(root / "scripts" / "demo.sh")],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
        cwd=root,
    )
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert b"round trip ok" in r.stdout and b"chain intact" in r.stdout
