"""A fleet of real processes on one key store: three workers encrypt and decrypt without pause
while an admin process rotates, re-encrypts, retires and rewraps.

After each change's propagation bound no worker writes the old version and no worker decrypts
a retired one; afterwards a fresh process decrypts everything not deliberately retired. Run on
SQLite (polling) and on PostgreSQL (LISTEN/NOTIFY), with a worker SIGKILLed mid-rotation and
restarted, and with the KMS provider on the moto server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CREDENTIALS, kms_client
from tests.integration.fleet_proc import read_log

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("fleet_proc.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
REFRESH = 0.5
#: Scheduling slack on top of the refresh bound: five busy Python processes share two cores.
SLACK = 1.5


def _env(data_dir: Path, store_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GLC_DATA_DIR": str(data_dir),
            "GLC_KEY_STORE_URL": store_url,
            "GLC_KEYRING_REFRESH_SECONDS": str(REFRESH),
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    env.update(extra or {})
    return env


def _err_path(out: Path, *args: str) -> Path:
    return out / (f"worker-{args[1]}.stderr" if args[0] == "worker" else f"{args[0]}.stderr")


def _spawn(env: dict[str, str], out: Path, *args: str) -> subprocess.Popen[bytes]:
    with _err_path(out, *args).open("wb") as err:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), *args, str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _stderr(out: Path, *args: str) -> str:
    return _err_path(out, *args).read_text()


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _enc_count(path: Path) -> int:
    return sum(1 for r in read_log(path) if r["op"] == "enc") if path.exists() else 0


def run_fleet(
    tmp_path: Path,
    store_url: str,
    *,
    extra_env: dict[str, str] | None = None,
    kill_one: bool = False,
    rewrap_to: str | None = None,
) -> dict[str, Any]:
    data_dir = tmp_path / "data"
    out = tmp_path / "out"
    out.mkdir()
    env = _env(data_dir, store_url, extra_env)
    if "GLC_PROVIDER" not in env:
        init = subprocess.run(
            [sys.executable, "-m", "greenlang_crypto", "init"],
            env=env,
            capture_output=True,
            check=False,
        )
        assert init.returncode == 0, init.stderr
    names = ["a", "b", "c"]
    workers = {n: _spawn(env, out, "worker", n) for n in names}
    procs = list(workers.values())
    try:
        _wait_for(
            lambda: all(_enc_count(out / f"worker-{n}.jsonl") >= 20 for n in names),
            60,
            "workers did not start",
        )
        admin = _spawn(env, out, "admin", rewrap_to or "-")
        procs.append(admin)
        if kill_one:
            _wait_for((out / "rotated").exists, 30, "no rotation")
            workers["a"].send_signal(signal.SIGKILL)
            workers["a"].wait(10)
            time.sleep(0.3)
            restarted = _spawn(env, out, "worker", "a2")
            procs.append(restarted)
        assert admin.wait(90) == 0, _stderr(out, "admin", rewrap_to or "-")
        time.sleep(0.5)
    finally:
        (out / "stop").touch()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    for name, proc in workers.items():
        if not (kill_one and name == "a"):
            assert proc.returncode == 0, _stderr(out, "worker", name)
    verify = subprocess.run(
        [sys.executable, str(SCRIPT), "verify", str(out)], env=env, capture_output=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    events = json.loads((out / "admin.json").read_text())
    summary = json.loads((out / "verify.json").read_text())
    logs = {p.name: read_log(p) for p in out.glob("worker-*.jsonl")}
    return {"events": events, "summary": summary, "logs": logs}


def check_fleet(result: dict[str, Any]) -> dict[str, float]:
    events, summary, logs = result["events"], result["summary"], result["logs"]
    new = events["new_version"]
    bound = REFRESH + SLACK
    lag_write = 0.0
    lag_decrypt = 0.0
    for name, records in logs.items():
        assert not [r for r in records if r["op"] == "enc_err"], name
        for r in records:
            if r["op"] == "enc" and r["v"] < new:
                lag_write = max(lag_write, r["t"] - events["rotated"])
                # No old-version write after the propagation bound of the rotation.
                assert r["t"] <= events["rotated"] + bound, (name, r["t"] - events["rotated"])
            if r["op"] == "dec" and r["v"] < new and r["ok"]:
                lag_decrypt = max(lag_decrypt, r["t"] - events["retired"])
                # No decrypt of the retired version after the bound of the retirement.
                assert r["t"] <= events["retired"] + bound, (name, r["t"] - events["retired"])
            if r["op"] == "dec" and not r["ok"]:
                # The only failures: the retired version, refused (or its DEK already gone).
                assert r["v"] < new and r["err"] in ("KeyRetiredError", "KeyNotFoundError"), r
                if r["t"] > events["retired"] + bound:
                    assert r["err"] == "KeyRetiredError", r
                assert r["t"] >= events["converged"], r
    # Zero lost: everything not deliberately retired decrypts in a fresh process.
    assert summary["lost"] == []
    assert summary["checked"] > 60
    assert events["reencrypted"] > 0 and summary["retired_refused"] == events["reencrypted"]
    assert events["rewrapped_deks"] > 0
    return {"write_lag": lag_write, "decrypt_lag": lag_decrypt}


def test_fleet_on_sqlite(tmp_path: Path) -> None:
    result = run_fleet(tmp_path, f"sqlite:///{tmp_path / 'data' / 'keystore.db'}")
    check_fleet(result)


def test_fleet_on_postgresql(tmp_path: Path, pg_database: str) -> None:
    result = run_fleet(tmp_path, pg_database)
    lags = check_fleet(result)
    # LISTEN/NOTIFY: the fleet moves well before the polling bound.
    assert lags["write_lag"] < REFRESH + SLACK


def test_fleet_with_a_worker_killed_mid_rotation(tmp_path: Path, pg_database: str) -> None:
    result = run_fleet(tmp_path, pg_database, kill_one=True)
    check_fleet(result)
    assert "worker-a2.jsonl" in result["logs"]


def test_fleet_on_kms(tmp_path: Path, pg_database: str, kms_endpoint: str) -> None:
    # Keys of this test's own (no server reset: other tests share the server).
    client = kms_client(kms_endpoint)
    first = client.create_key(Description="fleet test")["KeyMetadata"]["Arn"]
    second = client.create_key(Description="fleet test rewrap")["KeyMetadata"]["Arn"]
    extra = {
        "GLC_PROVIDER": "aws-kms",
        "GLC_KMS_KEY_IDS": f"{first},{second}",
        "GLC_KMS_ENDPOINT_URL": kms_endpoint,
        "GLC_KMS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
    }
    result = run_fleet(tmp_path, pg_database, extra_env=extra, rewrap_to=second)
    check_fleet(result)
