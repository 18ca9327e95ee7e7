"""The API over real HTTP: `greenlang-crypto serve` in a subprocess on a free 127.0.0.1 port,
a token from `greenlang-crypto token`, then `audit verify` / `audit tail` on what it wrote."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from greenlang_crypto.providers.local import LocalKeyProvider

pytestmark = pytest.mark.integration

API = "/api/v1/encryption"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path / "data"
    LocalKeyProvider(data_dir).create_master_key()
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data_dir),
            "serve", "--host", "127.0.0.1", "--port", str(port), "--audit-flush-interval", "0.2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "serve.log").read_text())
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready: " + (tmp_path / "serve.log").read_text())
            time.sleep(0.1)
        yield base, data_dir
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def test_round_trip_over_http_then_verify_the_audit_chain(server: tuple[str, Path]) -> None:
    base, data_dir = server
    minted = _cli(
        data_dir,
        "token",
        "--permissions",
        "encryption:encrypt,encryption:decrypt,encryption:admin,encryption:audit",
        "--tenant",
        "acme",
        "--subject",
        "ops",
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    secret_file = data_dir / "api-token.secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    headers = {"Authorization": f"Bearer {token}"}
    # Rotation, key listing and audit reads are fleet-wide: they take a token without tenant
    # that holds the fleet grant.
    fleet = _cli(
        data_dir,
        "token",
        "--permissions",
        "encryption:admin,encryption:audit,encryption:fleet",
        "--subject",
        "ops",
    )
    assert fleet.returncode == 0, fleet.stderr
    fleet_headers = {"Authorization": f"Bearer {fleet.stdout.strip()}"}
    ctx = {"tenant_id": "acme", "data_class": "pii"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
        assert http.get(f"{API}/status").status_code == 403  # no encryption:read
        r = http.post(
            f"{API}/encrypt",
            json={"plaintext": base64.b64encode(b"hello over http").decode(), "context": ctx},
        )
        assert r.status_code == 200, r.text
        ct = r.json()["ciphertext"]
        r = http.post(f"{API}/decrypt", json={"ciphertext": ct, "context": ctx, "reason": "demo"})
        assert base64.b64decode(r.json()["plaintext"]) == b"hello over http"
        assert http.post(f"{API}/keys/rotate").status_code == 403  # tenant-scoped
        assert http.post(f"{API}/keys/rotate", headers=fleet_headers).json()["new_version"] == 2
        assert http.get(f"{API}/keys", headers=fleet_headers).json()["primary_version"] == 2
        r = http.get(f"{API}/audit", params={"action": "key_rotate"}, headers=fleet_headers)
        assert [x["outcome"] for x in r.json()["records"]] == ["intent", "success"]
        assert httpx.get(f"{base}/api/v1/encryption/keys", timeout=5).status_code == 401
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert "gl_encryption_audit_sink_up 1.0" in metrics
        assert 'gl_kms_calls_total{operation="GenerateDataKey",status="success"}' in metrics
    # Give the flusher one interval, then stop the server (which flushes on exit).
    time.sleep(0.5)


def test_cli_audit_verify_and_tail(server: tuple[str, Path]) -> None:
    base, data_dir = server
    token = _cli(
        data_dir, "token", "--permissions", "encryption:admin,encryption:fleet"
    ).stdout.strip()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(3):
            assert http.post(f"{API}/keys/rotate").status_code == 200
    ok = _cli(data_dir, "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "chain intact" in ok.stdout
    tail = _cli(data_dir, "audit", "tail", "-n", "3")
    rows = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(rows) == 3 and all("hmac" in r for r in rows)
    with sqlite3.connect(data_dir / "audit.db") as db:
        db.execute("UPDATE glc_audit SET actor = 'someone-else' WHERE seq = 2")
    bad = _cli(data_dir, "audit", "verify")
    assert bad.returncode == 1
    assert "BAD record seq 2: edited" in bad.stdout
