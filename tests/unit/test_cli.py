"""The CLI end to end on the embedded default, in a subprocess like a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run(tmp_path: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, GLC_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_round_trip_rotate_and_status(tmp_path: Path) -> None:
    assert run(tmp_path, "init").returncode == 0
    ctx = ["--tenant", "acme", "--data-class", "pii"]
    enc = run(tmp_path, "encrypt", *ctx, stdin=b"alice@example.com")
    assert enc.returncode == 0 and enc.stdout[:1] == b"\xfa"
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
