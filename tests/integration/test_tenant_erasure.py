"""Tenant erasure across real processes on one PostgreSQL key store.

A writer process encrypts for the tenant without pause while this process erases it: no write
the writer saw succeed is sealed under a key the erasure destroys after the fleet acknowledged
the erasure's first phase, and once ``erase_tenant`` returns the writer's new writes go under
fresh keys and stay readable. A paused (SIGSTOP) writer is waited for and, resumed, seals
nothing under the erased keys; two admins erasing at once both finish with nothing lost; a
per-tenant blind-index lookup of the erased tenant's value finds nothing; and ``keys erase``
runs from the command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import DataErasedError
from greenlang_crypto.keys.keyring import fence_seconds
from greenlang_crypto.service import EncryptionService
from tests.clirun import run
from tests.integration.erasure_proc import CTX, PURPOSE, TENANT, read_log

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("erasure_proc.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
REFRESH = 0.5


class _PhaseClock:
    """Notes when each erasure phase was reported."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        if event == "tenant_erased":
            self.phases[str(fields["phase"])] = time.time()


def _config(tmp_path: Path, store_url: str, reference: str = "stored") -> EncryptionServiceConfig:
    return EncryptionServiceConfig(
        data_dir=tmp_path / "data",
        key_store_url=store_url,
        keyring_refresh_seconds=REFRESH,
        key_reference=reference,
    )


def _env(tmp_path: Path, store_url: str, reference: str = "stored") -> dict[str, str]:
    env = dict(os.environ)
    path = [p for p in (os.environ.get("PYTHONPATH"), str(REPO_ROOT)) if p]
    env.update(
        {
            "GLC_DATA_DIR": str(tmp_path / "data"),
            "GLC_KEY_STORE_URL": store_url,
            "GLC_KEYRING_REFRESH_SECONDS": str(REFRESH),
            "GLC_KEY_REFERENCE": reference,
            "PYTHONPATH": os.pathsep.join(path),
        }
    )
    return env


def _spawn(env: dict[str, str], out: Path, *args: str) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{args[0]}-{len(list(out.iterdir()))}.stderr").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), args[0], str(out), *args[1:]],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _stderr(out: Path) -> str:
    return "".join(p.read_text() for p in sorted(out.glob("*.stderr")))


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _ok_since(log: Path, since: float) -> int:
    return sum(1 for r in read_log(log) if r["ok"] and r["t0"] > since)


@pytest.fixture
def admin(tmp_path: Path, pg_database: str) -> Iterator[tuple[EncryptionService, _PhaseClock]]:
    clock = _PhaseClock()
    config = _config(tmp_path, pg_database)
    EncryptionService.init_local(config=config).close()  # the master key, once
    svc = EncryptionService(config, observers=[clock])
    try:
        yield svc, clock
    finally:
        svc.close()


def _stop(out: Path, *procs: subprocess.Popen[bytes]) -> None:
    (out / "stop").touch()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("reference", "operation"),
    [("stored", "erase"), ("branch", "erase"), ("branch", "branch-delete")],
)
def test_no_write_is_acknowledged_under_a_key_the_erasure_destroys(
    tmp_path: Path,
    pg_database: str,
    admin: tuple[EncryptionService, _PhaseClock],
    reference: str,
    operation: str,
) -> None:
    svc, clock = admin
    out = tmp_path / "out"
    log = out / "writer.jsonl"
    writer = _spawn(_env(tmp_path, pg_database, reference), out, "writer")
    try:
        _wait_for(lambda: _ok_since(log, 0) >= 30, 60, "the writer never wrote")
        called = time.time()
        if operation == "erase":
            report = svc.erase_tenant(TENANT)
            assert report.completed and report.keys_destroyed >= 1
            assert report.instances_acknowledged == 1  # the writer confirmed both phases
        else:
            # `keys branch-delete --tenant`: the deletion that let a running instance go on
            # sealing under the deleted key for a refresh period.
            assert svc.delete_branch_keys("tenant:" + TENANT) >= 1
        returned = time.time()
        _wait_for(lambda: _ok_since(log, returned) >= 30, 60, "no write after the erasure")
    finally:
        _stop(out, writer)
    assert writer.returncode == 0, _stderr(out)
    # When the fleet acknowledged phase 1 (a deletion without that phase: when it began).
    acknowledged = clock.phases.get("erasing", called)
    erased = after = 0
    for record in read_log(log):
        if not record["ok"]:
            # Refused only while the erasure ran, with the typed error.
            assert record["err"] == "TenantErasingError", record
            assert record["t1"] >= called and record["t0"] <= returned, record
            continue
        envelope = bytes.fromhex(record["env"])
        if svc.is_erased(envelope):
            # Erased by design only if sealed before the fleet acknowledged phase 1: a write
            # acknowledged under a destroyed key after that would be data reported as saved
            # and then lost.
            assert record["t0"] < acknowledged, record
            with pytest.raises(DataErasedError):
                svc.decrypt(envelope, CTX)
            erased += 1
        else:
            # Under fresh keys: made after the erasure began, and readable for good.
            assert record["t1"] > called, record
            assert svc.decrypt(envelope, CTX) == f"w-{record['seq']}".encode()
            after += record["t0"] > returned
    assert erased >= 30 and after >= 30


def test_a_paused_instance_is_waited_for_and_seals_nothing_under_erased_keys(
    tmp_path: Path, pg_database: str, admin: tuple[EncryptionService, _PhaseClock]
) -> None:
    svc, _clock = admin
    out = tmp_path / "out"
    log = out / "writer.jsonl"
    writer = _spawn(_env(tmp_path, pg_database), out, "writer")
    try:
        _wait_for(lambda: _ok_since(log, 0) >= 20, 60, "the writer never wrote")
        os.kill(writer.pid, signal.SIGSTOP)
        stopped = time.time()
        started = time.monotonic()
        report = svc.erase_tenant(TENANT)
        took = time.monotonic() - started
        os.kill(writer.pid, signal.SIGCONT)
        resumed = time.time()
        _wait_for(lambda: _ok_since(log, resumed) >= 20, 60, "no write after resuming")
    finally:
        os.kill(writer.pid, signal.SIGCONT)
        _stop(out, writer)
    assert writer.returncode == 0, _stderr(out)
    # The paused writer never acknowledged: the erasure went on only once its fence had
    # closed (it counts as live until then).
    assert report.instances_acknowledged == 0 and took >= fence_seconds(REFRESH)
    for record in read_log(log):
        if not record["ok"]:
            assert record["err"] == "TenantErasingError", record
            continue
        envelope = bytes.fromhex(record["env"])
        if record["t0"] > resumed:
            assert not svc.is_erased(envelope), record
            assert svc.decrypt(envelope, CTX) == f"w-{record['seq']}".encode()
        elif svc.is_erased(envelope):
            assert record["t0"] < stopped, record


def test_two_admins_erasing_at_once_both_finish_and_nothing_is_lost(
    tmp_path: Path, pg_database: str, admin: tuple[EncryptionService, _PhaseClock]
) -> None:
    svc, _clock = admin
    old = [
        svc.encrypt(b"s", EncryptionContext(TENANT, data_class), key_reference="stored")
        for data_class in ("a", "b", "c")
    ] + [svc.encrypt(b"b", CTX, key_reference="branch")]
    out = tmp_path / "out"
    env = _env(tmp_path, pg_database)
    admins = [_spawn(env, out, "admin", name) for name in ("one", "two")]
    # Both connected before either starts.
    _wait_for(lambda: len(svc.live_instances()) >= 3, 60, "the admins never registered")
    (out / "go").touch()
    for proc in admins:
        proc.wait(timeout=60)
        assert proc.returncode == 0, _stderr(out)
    results = [json.loads((out / f"{name}.json").read_text()) for name in ("one", "two")]
    assert sum(r["completed"] for r in results) >= 1
    assert sum(r["stored_deks"] for r in results) == 3
    assert sum(r["branch_keys"] for r in results) == 1
    assert all(set(r["phases"]) == {"erasing", "erased"} for r in results)
    svc.refresh_keyring()
    for envelope in old:
        assert svc.is_erased(envelope)
    record = svc.store.erasures.get(TENANT)
    assert record is not None and record.state == "erased"
    # Written after both returned: fresh keys, readable, not erased.
    for reference in ("stored", "branch"):
        fresh = svc.encrypt(b"new", CTX, key_reference=reference)
        assert svc.decrypt(fresh, CTX) == b"new" and not svc.is_erased(fresh)


def test_a_per_tenant_index_lookup_finds_nothing_after_the_erasure(
    tmp_path: Path, pg_database: str, admin: tuple[EncryptionService, _PhaseClock]
) -> None:
    svc, _clock = admin
    before, after = tmp_path / "before", tmp_path / "after"
    env = _env(tmp_path, pg_database)
    writer = _spawn(env, before, "index")
    try:
        _wait_for((before / "index.json").exists, 60, "the index writer never wrote")
        values = json.loads((before / "index.json").read_text())
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("CREATE TABLE users (tenant TEXT, email_idx BYTEA)")
            for tenant, value in values.items():
                conn.execute("INSERT INTO users VALUES (%s, %s)", (tenant, bytes.fromhex(value)))
        report = svc.erase_tenant(TENANT)
        assert report.instances_acknowledged == 1  # the index writer, still running
    finally:
        _stop(before, writer)
    assert writer.returncode == 0, _stderr(before)
    # Another process, started after the erasure, computes the lookup values.
    late = _spawn(env, after, "index")
    _stop(after, late)
    assert late.returncode == 0, _stderr(after)
    looked_up = json.loads((after / "index.json").read_text())

    def matches(tenant: str, value: str) -> int:
        with psycopg.connect(pg_database) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM users WHERE tenant = %s AND email_idx = %s",
                (tenant, bytes.fromhex(value)),
            ).fetchone()
        assert row is not None
        return int(row[0])

    assert matches(TENANT, looked_up[TENANT]) == 0
    assert matches("globex", looked_up["globex"]) == 1
    here = svc.blind_index_key(PURPOSE + TENANT).compute(b"a@example.com").hex()
    assert here == looked_up[TENANT] and matches(TENANT, here) == 0


def test_keys_erase_from_the_cli(
    tmp_path: Path,
    pg_database: str,
    admin: tuple[EncryptionService, _PhaseClock],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc, _clock = admin
    monkeypatch.setenv("GLC_KEY_STORE_URL", pg_database)
    monkeypatch.setenv("GLC_KEYRING_REFRESH_SECONDS", str(REFRESH))
    stored = svc.encrypt(b"s", CTX, key_reference="stored")
    branch = svc.encrypt(b"b", CTX, key_reference="branch")
    other = svc.encrypt(b"g", EncryptionContext("globex", "pii"))

    refused = run(tmp_path, "keys", "erase", "--tenant", TENANT)
    assert refused.returncode == 2 and b"--yes" in refused.stderr
    assert svc.decrypt(stored, CTX) == b"s" and not svc.is_erased(stored)

    done = run(tmp_path, "keys", "erase", "--tenant", TENANT, "--yes")
    assert done.returncode == 0, done.stderr
    assert (
        b"tenant acme erased: 1 stored DEK(s) and 1 branch key(s) destroyed; "
        b"1 other instance(s) acknowledged"
    ) in done.stdout
    for envelope in (stored, branch):
        with pytest.raises(DataErasedError):
            svc.decrypt(envelope, CTX)
    assert svc.decrypt(other, EncryptionContext("globex", "pii")) == b"g"

    again = run(tmp_path, "keys", "erase", "--tenant", TENANT, "--yes", "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["tenant_id"] == TENANT and doc["completed"] and doc["began"]
    assert doc["stored_deks_destroyed"] == doc["branch_keys_destroyed"] == 0
    tail = run(tmp_path, "audit", "tail", "-n", "20").stdout
    assert b"tenant_erase" in tail and TENANT.encode() not in tail
    assert run(tmp_path, "keys", "erase").returncode == 2  # --tenant is required


def test_an_admin_killed_between_the_phases_leaves_the_tenant_refused_until_a_rerun(
    tmp_path: Path, pg_database: str, admin: tuple[EncryptionService, _PhaseClock]
) -> None:
    svc, _clock = admin
    out = tmp_path / "out"
    log = out / "writer.jsonl"
    env = _env(tmp_path, pg_database)
    old = svc.encrypt(b"old", CTX)
    writer = _spawn(env, out, "writer")
    try:
        _wait_for(lambda: _ok_since(log, 0) >= 20, 60, "the writer never wrote")
        # A paused writer holds the admin in phase 1 (it waits for the writer's fence).
        os.kill(writer.pid, signal.SIGSTOP)
        killed_admin = _spawn(env, out, "admin", "killed")
        (out / "go").touch()

        def erasing() -> bool:
            record = svc.store.erasures.get(TENANT)
            return record is not None and record.state == "erasing"

        _wait_for(erasing, 60, "the admin never began")
        killed_admin.kill()
        killed_admin.wait()
        os.kill(writer.pid, signal.SIGCONT)
        resumed = time.time()
        # Stuck in phase 1: the writer is refused, and nothing was deleted yet.
        _wait_for(
            lambda: any(not r["ok"] and r["t0"] > resumed for r in read_log(log)),
            60,
            "the writer was not refused",
        )
        assert svc.decrypt(old, CTX) == b"old"
        assert not (out / "killed.json").exists()
        report = svc.erase_tenant(TENANT)
        returned = time.time()
        _wait_for(lambda: _ok_since(log, returned) >= 20, 60, "no write after the rerun")
    finally:
        os.kill(writer.pid, signal.SIGCONT)
        _stop(out, writer)
    assert writer.returncode == 0, _stderr(out)
    assert not report.began and report.completed and report.stored_deks_destroyed >= 1
    with pytest.raises(DataErasedError):
        svc.decrypt(old, CTX)
    for record in read_log(log):
        if not record["ok"]:
            assert record["err"] == "TenantErasingError" and record["t0"] < returned, record
        elif record["t0"] > returned:
            envelope = bytes.fromhex(record["env"])
            assert svc.decrypt(envelope, CTX) == f"w-{record['seq']}".encode()
