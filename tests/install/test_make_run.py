"""``make run`` from a fresh clone, as the README's first command: demo, then a serving API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.install.conftest import REPO_ROOT, clean_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_make_run_from_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True, timeout=120)
    port = _free_port()
    log = tmp_path / "make-run.log"
    # Reusing the project's Cargo target directory only saves compiling dependencies again;
    # the clone still builds and installs itself with nothing but `make run`.
    env = clean_env(GLC_PORT=str(port), CARGO_TARGET_DIR=str(REPO_ROOT / "target"))
    env["PATH"] = os.environ["PATH"]  # make run builds from source: it needs Rust
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["make", "run"],
            cwd=clone,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        health = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = (r.status, json.loads(r.read()))
                    break
            except OSError:
                time.sleep(1)
        text = log.read_text(errors="replace")
        assert health is not None, text[-4000:]
        assert health[0] == 200, health
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text(errors="replace")
    for step in (
        "== init",
        "== encrypt",
        "== rotate",
        "round trip ok",
        "== wrong tenant",
        "== keys",
        "== status",
        "== audit",
        "== serve",
    ):
        assert step in text, (step, text[-4000:])
    assert "Traceback" not in text
