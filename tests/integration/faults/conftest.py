"""Fixtures and helpers of the fault tests: real processes on a private PostgreSQL cluster.

Each test gets a cluster of its own (``tests/pgcluster.py``), because these tests stop and
restart PostgreSQL, and doing that to the shared cluster would break every other test running
against it. Processes are started the way a deployment starts instances: a fresh interpreter
configured only through ``GLC_*`` variables. The keyring refresh is 1 s, so the bounds the
library promises are short enough to wait out:

- fence bound ``2 * refresh + 1``: an instance seals only while its last confirmed keyring read
  is younger than this;
- liveness window ``3 * refresh + 2``: a retirement stops waiting for an instance whose last
  heartbeat is older than this.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.faults.fault_proc import read_log
from tests.pgcluster import PgCluster, pgbin, private_cluster

REPO_ROOT = Path(__file__).resolve().parents[3]
PROC = Path(__file__).with_name("fault_proc.py")

REFRESH = 1.0
FENCE = 2 * REFRESH + 1
LIVENESS = 3 * REFRESH + 2


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster, destroyed after the test."""
    if pgbin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (scripts/setup.sh installs it)")
        pytest.skip("PostgreSQL is not installed; run scripts/setup.sh")
    with private_cluster() as pg:
        yield pg


def base_env(data_dir: Path, store_url: str, **extra: str) -> dict[str, str]:
    """The environment of an instance: this test's store and data directory, nothing else.

    ``GLC_*`` variables of the calling shell are dropped so that they cannot change what an
    instance does (a key reference, a cache URL) behind the test's back.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLC_")}
    path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        {
            "GLC_DATA_DIR": str(data_dir),
            "GLC_KEY_STORE_URL": store_url,
            "GLC_KEYRING_REFRESH_SECONDS": str(REFRESH),
            "PYTHONPATH": os.pathsep.join(path),
        }
    )
    env.update(extra)
    return env


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls ``predicate`` until it holds; fails the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def enc_count(path: Path) -> int:
    """Acknowledged encryptions in a worker log so far."""
    if not path.exists():
        return 0
    return sum(1 for r in read_log(path) if r["op"] == "enc")


@dataclass
class Rig:
    """One key store on a private cluster, its data directory and the processes on it."""

    cluster: PgCluster
    data_dir: Path
    out: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: The arguments each process was spawned with, by pid (they name its stderr file).
    spawned: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Starts ``fault_proc.py ARGS... OUT`` (stderr kept in the output directory)."""
        with (self.out / f"{'-'.join(args)}.stderr").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(PROC), *args, str(self.out)],
                env=env or self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.procs.append(proc)
        self.spawned[proc.pid] = args
        return proc

    def await_writes(self, proc: subprocess.Popen[bytes], name: str, count: int) -> None:
        """Waits until worker ``name`` logged ``count`` seals; fails at once if it died."""
        log = self.out / f"log-{name}.jsonl"
        wait_for(lambda: enc_count(log) >= count or proc.poll() is not None, 60, f"{name} hung")
        assert proc.poll() is None, self.stderr(*self.spawned[proc.pid])

    def stderr(self, *args: str) -> str:
        """What ``fault_proc.py ARGS...`` wrote to stderr (the tail)."""
        path = self.out / f"{'-'.join(args)}.stderr"
        return path.read_text()[-4000:] if path.exists() else ""

    def run(self, *args: str, timeout: float = 90) -> None:
        """Runs ``fault_proc.py ARGS... OUT`` to completion; fails the test if it fails."""
        proc = self.spawn(*args)
        assert proc.wait(timeout) == 0, self.stderr(*args)

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``python -m greenlang_crypto ARGS...`` and returns its outcome."""
        return subprocess.run(
            [sys.executable, "-m", "greenlang_crypto", *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Runs the CLI, fails the test unless it exits 0, and returns its stdout."""
        done = self.cli(*args, env=env)
        assert done.returncode == 0, (args, done.stdout, done.stderr[-4000:])
        return done.stdout

    def keys_status(self) -> dict[str, Any]:
        """``keys status --json``: the keyring and every registered instance."""
        doc: dict[str, Any] = json.loads(self.cli_ok("keys", "status", "--json"))
        return doc

    def stop_all(self, timeout: float = 30) -> None:
        """Tells every worker to stop and waits; kills what does not exit in time."""
        (self.out / "stop").touch()
        for proc in self.procs:
            if proc.poll() is None:
                # A worker left suspended by a failed test would never see the stop file.
                proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def rig(cluster: PgCluster, tmp_path: Path) -> Iterator[Rig]:
    """A key store on the private cluster with the local provider, initialized by the CLI.

    The local provider keeps its master keys in the data directory, which every process of
    the test shares (as instances on one host, or on a shared volume, do).
    """
    out = tmp_path / "out"
    out.mkdir()
    data_dir = tmp_path / "data"
    rig = Rig(cluster, data_dir, out, base_env(data_dir, cluster.url))
    rig.cli_ok("init")
    try:
        yield rig
    finally:
        rig.stop_all()
