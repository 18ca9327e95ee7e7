"""The API embedded in a host FastAPI app, over real HTTP: host processes served by uvicorn
(``tests/api/embedded_host.py``) starting together on one new data directory, and processes
racing to build their stack on a new directory."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from greenlang_crypto.api import build_stack
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.context import EncryptionContext

from .served import API, cli, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ACME = {"tenant_id": "acme", "data_class": "pii"}


Host = tuple[str, subprocess.Popen[bytes]]


def _release(go: Path, count: int, procs: list[subprocess.Popen[bytes]]) -> None:
    """Waits until ``count`` processes have said they are ready, then lets them all go."""
    deadline = time.monotonic() + 60
    while len(list(go.parent.glob(f"{go.name}.ready-*"))) < count:
        assert all(p.poll() is None for p in procs), "a process exited before the start"
        assert time.monotonic() < deadline, "processes not ready"
        time.sleep(0.01)
    go.touch()


def _start_hosts(data_dir: Path, count: int, log_dir: Path) -> list[Host]:
    # Every host builds its stack at the same instant, once all interpreters have started.
    go = log_dir / "go"
    hosts = []
    for i in range(count):
        port = free_port()
        out = (log_dir / f"host-{i}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.api.embedded_host", str(data_dir), str(port), str(go)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=dict(os.environ),
        )
        out.close()
        hosts.append((f"http://127.0.0.1:{port}", proc))
    _release(go, count, [proc for _, proc in hosts])
    return hosts


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 40
    while True:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("host not ready: " + log.read_text())
        time.sleep(0.1)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    data_dir = tmp_path / "fresh" / "crypto"
    hosts = _start_hosts(data_dir, 2, tmp_path)
    try:
        for i, (base, proc) in enumerate(hosts):
            _wait_ready(base, proc, tmp_path / f"host-{i}.log")
        yield [base for base, _ in hosts], data_dir
    finally:
        for _, proc in hosts:
            proc.send_signal(signal.SIGINT)
        for _, proc in hosts:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _token(data_dir: Path, permissions: str, tenant: str | None = None) -> dict[str, str]:
    args = ["token", "--permissions", permissions, "--subject", "embedder"]
    if tenant is not None:
        args += ["--tenant", tenant]
    done = cli(data_dir, *args)
    assert done.returncode == 0, done.stderr
    return {"Authorization": f"Bearer {done.stdout.strip()}"}


def test_two_hosts_start_on_a_new_directory_and_keep_their_own_errors(
    two_hosts: tuple[list[str], Path],
) -> None:
    (first, second), data_dir = two_hosts
    # Both initialized the one directory together: one master key, no leftovers beside it.
    assert len(list((data_dir / "master-keys").glob("master-v*.key"))) == 1
    assert [p.name for p in data_dir.parent.iterdir()] == ["crypto"]
    tenant = _token(data_dir, "encryption:encrypt,encryption:decrypt", tenant="acme")
    with httpx.Client(timeout=10) as http:
        # Data sealed by one host opens in the other: the same key.
        r = http.post(
            f"{first}{API}/encrypt",
            json={"plaintext": base64.b64encode(b"embedded").decode(), "context": ACME},
            headers=tenant,
        )
        assert r.status_code == 200, r.text
        r = http.post(
            f"{second}{API}/decrypt",
            json={"ciphertext": r.json()["ciphertext"], "context": ACME, "reason": "embed test"},
            headers=tenant,
        )
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json()["plaintext"]) == b"embedded"
        for base in (first, second):
            # The host's own routes: FastAPI's field-level 422 and the host's handler.
            r = http.post(f"{base}/orders", json={"quantity": "many"})
            assert r.status_code == 422
            assert {tuple(e["loc"]) for e in r.json()["detail"]} == {
                ("body", "sku"),
                ("body", "quantity"),
            }
            assert http.get(f"{base}/orders/3").json() == {"error": "out of stock"}
            # The API's routes: their typed errors.
            r = http.post(f"{base}{API}/encrypt", json={"plaintext": "x"})
            assert (r.status_code, r.json()) == (401, {"detail": "unauthorized"})
            r = http.post(
                f"{base}{API}/encrypt",
                json={"plaintext": "not base64 4111", "context": ACME},
                headers=tenant,
            )
            assert (r.status_code, r.json()) == (422, {"detail": "invalid request"})
            # Metrics where the host put them, health at the root.
            assert http.get(f"{base}/metrics").status_code == 404
            metrics = http.get(f"{base}/internal/metrics")
            assert metrics.status_code == 200
            assert "gl_encryption_audit_sink_up 1.0" in metrics.text
            assert http.get(f"{base}/healthz").json()["status"] == "ok"


_RACER = textwrap.dedent(
    """
    import base64, json, sys, time
    from pathlib import Path
    from greenlang_crypto.api import build_stack
    from greenlang_crypto.composition import init_local_data_dir
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.context import EncryptionContext

    data_dir, go, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    config = EncryptionServiceConfig(data_dir=data_dir)
    Path(f"{go}.ready-{name}").touch()
    while not go.exists():
        time.sleep(0.001)
    created = init_local_data_dir(config)
    stack = build_stack(config, flush_interval=60.0, initialize_if_missing=True)
    try:
        sealed = stack.service.encrypt(name.encode(), EncryptionContext("acme", "pii"))
        versions = [(v.version, v.wrapping_key_id) for v in stack.service.versions()]
    finally:
        stack.close()
    print(json.dumps({"created": created, "sealed": base64.b64encode(sealed).decode(),
                      "versions": versions}))
    """
)


@pytest.mark.parametrize(("processes", "existing"), [(2, False), (4, False), (4, True)])
def test_processes_racing_on_a_new_directory_all_succeed_with_one_key(
    tmp_path: Path, processes: int, existing: bool
) -> None:
    data_dir = tmp_path / "race" / "crypto"
    go = tmp_path / "go"
    if existing:
        # An existing empty directory (a volume's mount point, say) is initialized in place:
        # the same directory, not one renamed over it.
        data_dir.mkdir(parents=True)
        before = data_dir.stat()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(data_dir), str(go), f"racer-{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(processes)
    ]
    _release(go, processes, procs)
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    # Exactly one created the key; the others found it (or lost the rename to it).
    assert sorted(r["created"] for r in results) == [False] * (processes - 1) + [True]
    assert len({json.dumps(r["versions"]) for r in results}) == 1
    assert len(list((data_dir / "master-keys").glob("master-v*.key"))) == 1
    assert [p.name for p in data_dir.parent.iterdir()] == ["crypto"]
    assert not [p.name for p in data_dir.iterdir() if p.name.startswith(".glc")]
    if existing:
        after = data_dir.stat()
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    stack = build_stack(EncryptionServiceConfig(data_dir=data_dir), flush_interval=60.0)
    try:
        for i, r in enumerate(results):
            sealed = base64.b64decode(r["sealed"])
            opened = stack.service.decrypt(sealed, EncryptionContext("acme", "pii"))
            assert opened == f"racer-{i}".encode()
    finally:
        stack.close()


_IN_MOUNT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from greenlang_crypto.api import build_stack
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.context import EncryptionContext

    config = EncryptionServiceConfig(data_dir=Path(sys.argv[1]))
    stack = build_stack(config, flush_interval=60.0, initialize_if_missing=True)
    try:
        ctx = EncryptionContext("acme", "pii")
        assert stack.service.decrypt(stack.service.encrypt(b"row", ctx), ctx) == b"row"
    finally:
        stack.close()
    again = build_stack(config, flush_interval=60.0, initialize_if_missing=True)
    again.close()
    print(sorted(p.name for p in Path(sys.argv[1]).iterdir()))
    """
)


def test_an_empty_mount_point_is_initialized_in_place(tmp_path: Path) -> None:
    # A container's data directory is usually a volume mounted on an empty directory: no
    # rename can replace a mount point (EBUSY), so it is initialized in place. The mount is
    # made in a user and mount namespace of the test's own (util-linux `unshare`).
    mount = tmp_path / "volume"
    mount.mkdir()
    script = 'mount -t tmpfs glc-test "$1" && shift && exec "$@"'
    res = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            script,
            "sh",
            str(mount),
            sys.executable,
            "-c",
            _IN_MOUNT,
            str(mount),
        ],
        capture_output=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "python")),
    )
    assert res.returncode == 0, res.stderr.decode()
    assert "master-keys" in res.stdout.decode() and "keystore.db" in res.stdout.decode()
