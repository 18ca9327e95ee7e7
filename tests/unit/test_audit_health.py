"""Health reports and the audit sink: a sink that can be read but not written is down.

The served API (``greenlang-crypto serve`` over real HTTP) on an audit database that cannot be
written must answer ``/healthz`` with 503 and a typed body naming the audit sink, keep the
sink-down gauge at 0 (the probe writes; it never clears the alert), and refuse key changes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from greenlang_crypto.audit import AuditLog, SqliteAuditSink
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import AuditSinkUnavailableError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

API = "/api/v1/encryption"


def _make_read_only(path: Path) -> None:
    """Makes ``path`` unwritable for this process, root included.

    Mode bits do not stop root, so as root the file is also marked immutable (``chattr +i``),
    which the kernel enforces for every user.
    """
    path.chmod(0o400)
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"cannot make {path} read-only: {done.stderr.decode().strip()}")


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
    path.chmod(0o600)


@pytest.fixture
def read_only_audit(tmp_path: Path) -> Iterator[Path]:
    """A data directory whose audit database holds records and cannot be written."""
    data_dir = tmp_path / "data"
    LocalKeyProvider(data_dir).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=data_dir, keyring_refresh_seconds=0))
    audit = AuditLog(SqliteAuditSink(data_dir / "audit.db"), start_thread=False)
    audit.attach(svc)
    audit.record("admin_action", actor="setup")
    audit.close()
    svc.close()
    db = data_dir / "audit.db"
    _make_read_only(db)
    try:
        yield data_dir
    finally:
        _make_writable(db)


def test_the_health_probe_writes(read_only_audit: Path) -> None:
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=read_only_audit, keyring_refresh_seconds=0)
    )
    audit = AuditLog(SqliteAuditSink(read_only_audit / "audit.db"), start_thread=False)
    try:
        audit.attach(svc)
        # The chain key and the records still read fine: only a write shows the sink is down.
        assert audit.tail(1)[0].entry.actor == "setup"
        assert audit.verify().ok  # an evidence copy that cannot be written still verifies
        with pytest.raises(AuditSinkUnavailableError):
            audit.require_available()
        assert audit.sink_up is False
        with pytest.raises(AuditSinkUnavailableError):
            audit.record("key_rotate", actor="op", outcome="intent")
        assert audit.sink_up is False
    finally:
        audit.sink.close()
        svc.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cli(data_dir: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.integration
def test_healthz_over_http_reports_a_read_only_audit_database(
    read_only_audit: Path, tmp_path: Path
) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "greenlang_crypto", "--data-dir", str(read_only_audit),
            "serve", "--host", "127.0.0.1", "--port", str(port), "--audit-flush-interval", "0.2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        health: httpx.Response | None = None
        while health is None:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "serve.log").read_text())
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "serve.log").read_text()) from None
                time.sleep(0.1)
        assert health.status_code == 503
        assert health.json() == {
            "status": "degraded",
            "checks": {"kms": True, "key_store": True, "audit_sink": False},
        }
        # Asking again changes nothing, and the alert's gauge stays down.
        for _ in range(2):
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 503
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            assert "gl_encryption_audit_sink_up 0.0" in metrics
        token = _cli(read_only_audit, "token", "--permissions", "encryption:admin,encryption:fleet")
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
            assert http.post(f"{API}/keys/rotate").status_code == 503
            assert http.get(f"{API}/keys").status_code in (200, 403)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
    # Nothing changed: the rotation was refused before it acted.
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=read_only_audit, keyring_refresh_seconds=0)
    )
    try:
        assert svc.primary_version == 1
    finally:
        svc.close()


@pytest.mark.integration
def test_a_healthz_flood_costs_one_round_of_checks_per_interval(tmp_path: Path) -> None:
    # /healthz needs no token, and each check costs a request elsewhere (KMS, the key store,
    # an audit probe write): a flood must not become KMS throttling or an audit write load.
    import threading

    uvicorn = pytest.importorskip("uvicorn")  # the api extra

    from greenlang_crypto.api.app import create_app
    from greenlang_crypto.api.auth import JwtAuthorizer, dev_settings
    from greenlang_crypto.providers.base import ProviderHealth

    class CountingHealth(LocalKeyProvider):
        def __init__(self, data_dir: Path) -> None:
            super().__init__(data_dir)
            self.health_calls = 0

        def health(self) -> ProviderHealth:
            self.health_calls += 1
            return super().health()

    data_dir = tmp_path / "data"
    provider = CountingHealth(data_dir)
    provider.create_master_key()
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=data_dir, keyring_refresh_seconds=0), provider=provider
    )
    audit = AuditLog(SqliteAuditSink(data_dir / "audit.db"), start_thread=False)
    audit.attach(svc)
    app = create_app(svc, audit, authorizer=JwtAuthorizer(dev_settings(data_dir)))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        probes_before = provider.health_calls
        started = time.monotonic()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            codes = [http.get("/healthz").status_code for _ in range(60)]
        elapsed = time.monotonic() - started
        assert codes == [200] * 60
        # One round per 2 s interval (plus the one in flight at a boundary).
        assert provider.health_calls - probes_before <= int(elapsed / 2.0) + 2
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        audit.close()
        svc.close()
