"""Concurrent ``keys rotate`` processes never share or overwrite a wrapping key.

Four real ``python -m greenlang_crypto keys rotate`` processes are started per round; each
pays its import cost first, then spins until one shared wall-clock instant and only then runs
the command, so their key creation and key-store writes overlap. Twenty rounds, on the
embedded default (local master keys, SQLite key store, ``--data-dir``) and on KMS (the moto
server) with a PostgreSQL key store. Envelopes are written before the races and after every
round; at the end a fresh service decrypts every one of them, every version names a wrapping
key no other version names, and every racer either succeeded or failed with one typed line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from greenlang_crypto._core import parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.service import EncryptionService
from tests.integration.conftest import CREDENTIALS, kms_client

pytestmark = pytest.mark.integration

RACERS = 4
ROUNDS = 20
#: Lead time between the last racer being ready and the start: covers the go file reaching
#: every poller, so no racer starts late because it was still sleeping.
LEAD = 0.1
#: The racers' keyring refresh period: a process waits up to this long for its LISTEN thread
#: to stop at exit, and twenty rounds of the default (5 s) would dominate the runtime.
RACER_REFRESH = "0.2"
OK_LINE = re.compile(r"^rotated: v(\d+) -> v(\d+) \((.+)\)$")

# A racer: imports first (the expensive, uneven part), says it is ready, waits for the start
# instant the test publishes, spins until that instant and then runs the CLI exactly as
# ``python -m greenlang_crypto <args>`` would.
RACER = r"""
import os, runpy, sys, time
import greenlang_crypto.audit, greenlang_crypto.cli, greenlang_crypto.service
if os.environ.get("GLC_PROVIDER") == "aws-kms":
    import boto3, psycopg, greenlang_crypto.providers.aws_kms
go, ready = sys.argv[1], sys.argv[2]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
with open(go) as f:
    start = float(f.read())
while time.time() < start - 0.01:
    time.sleep(0.001)
while time.time() < start:
    pass
sys.argv = ["greenlang_crypto", *sys.argv[3:]]
runpy.run_module("greenlang_crypto", run_name="__main__", alter_sys=True)
"""


@dataclass
class Outcome:
    """What one racer did."""

    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def racer_env_base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every racer, before the test's own settings.

    No ``GLC_*`` setting of the caller leaks in. Racers may keep compiled modules, in a
    cache of this module's own (never beside the sources): compiling the package anew in
    each of 160 processes would cost more CPU time than the races themselves.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLC_")}
    env["GLC_KEYRING_REFRESH_SECONDS"] = RACER_REFRESH
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    return env


def _wait_for_files(paths: list[Path], procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while not all(p.exists() for p in paths):
        for proc in procs:
            assert proc.poll() is None, f"a racer exited before it was ready: {proc.returncode}"
        assert time.monotonic() < deadline, "racers did not get ready"
        time.sleep(0.005)


def race_round(
    workdir: Path, env: dict[str, str], argvs: list[list[str]], round_no: int
) -> list[Outcome]:
    """Starts one racer per argv list, lets them all act at one instant, collects results."""
    rdir = workdir / f"round-{round_no}"
    rdir.mkdir()
    go = rdir / "go"
    ready = [rdir / f"ready-{i}" for i in range(len(argvs))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(go), str(ready[i]), *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for i, argv in enumerate(argvs)
    ]
    outcomes: list[Outcome] = []
    try:
        _wait_for_files(ready, procs)
        # Published by rename so a racer never reads a half-written instant.
        tmp = rdir / "go.tmp"
        tmp.write_text(repr(time.time() + LEAD))
        tmp.replace(go)
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            outcomes.append(Outcome(proc.returncode, out.decode(), err.decode()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return outcomes


def check_outcome(outcome: Outcome) -> tuple[int, str] | None:
    """Asserts a racer succeeded or failed with one typed line; returns (version, key) if ok."""
    if outcome.code == 0:
        m = OK_LINE.match(outcome.stdout.strip())
        assert m, outcome
        return int(m.group(2)), m.group(3)
    # The CLI's failure codes: 2 for a typed refusal, 3 for "try again later".
    assert outcome.code in (2, 3), outcome
    assert "Traceback" not in outcome.stderr, outcome
    lines = outcome.stderr.splitlines()
    # One error line, after any one-line warnings the library logged on the way.
    assert lines and lines[-1].startswith("error: "), outcome
    assert all(line.startswith("warning: ") for line in lines[:-1]), outcome
    return None


def summary(outcomes: list[Outcome]) -> str:
    """Exit codes and distinct error lines, for the test log."""
    codes = sorted({o.code for o in outcomes})
    counts = {c: sum(o.code == c for o in outcomes) for c in codes}
    errors = sorted({o.stderr.splitlines()[-1] for o in outcomes if o.code})
    return f"exit codes {counts}" + "".join(f"\n  {e}" for e in errors)


@dataclass
class Written:
    """One envelope written at a checkpoint, and what decrypts it."""

    envelope: bytes
    plaintext: bytes
    context: dict[str, str]


def write_envelopes(svc: EncryptionService, tag: str) -> tuple[int, list[Written]]:
    """Writes a stored and an inline envelope under the newest version the store holds.

    The writer lives across rounds on purpose: it keeps every master key it loaded, so if a
    key file were replaced under it, what it wrote would no longer open with the key on disk.
    """
    svc.refresh_keyring()
    primary = svc.primary_version
    written = []
    for reference in ("stored", "inline"):
        ctx = {"tenant_id": f"t-{tag}-{reference}", "data_class": "pii"}
        plaintext = f"{tag}/{reference}".encode()
        envelope = svc.encrypt(plaintext, ctx, key_reference=reference)
        assert parse_envelope(envelope).key_version == primary
        written.append(Written(envelope, plaintext, ctx))
    return primary, written


def run_races(
    tmp_path: Path,
    config: EncryptionServiceConfig,
    env: dict[str, str],
    rounds: list[list[list[str]]],
) -> tuple[list[Written], dict[int, str], list[Outcome]]:
    """Writes envelopes, runs the rounds (envelopes after each), returns what it saw.

    ``rounds`` holds, per round, one CLI argument list per racer.
    """
    workdir = tmp_path / "races"
    workdir.mkdir()
    reported: dict[int, str] = {}
    outcomes: list[Outcome] = []
    # No background refresh in the writer: it reloads the keyring itself after each round.
    writer_config = dataclasses.replace(config, keyring_refresh_seconds=0)
    with EncryptionService(writer_config) as writer:
        last_primary, written = write_envelopes(writer, "before")
        for round_no, argvs in enumerate(rounds):
            round_outcomes = race_round(workdir, env, argvs, round_no)
            outcomes += round_outcomes
            for outcome in round_outcomes:
                ok = check_outcome(outcome)
                if ok is not None:
                    version, key = ok
                    # The store hands out each number once, whatever the provider did.
                    assert version not in reported, (version, key, reported)
                    reported[version] = key
            primary, more = write_envelopes(writer, f"round-{round_no}")
            # A successful rotation made a newer version, and this round's writes use it.
            assert primary >= last_primary
            if any(o.code == 0 for o in round_outcomes):
                assert primary > last_primary
            last_primary = primary
            written += more
    return written, reported, outcomes


def check_keyring(
    config: EncryptionServiceConfig, written: list[Written], reported: dict[int, str]
) -> list[tuple[int, str]]:
    """A fresh service (nothing cached) decrypts every envelope; versions keep their keys."""
    with EncryptionService(dataclasses.replace(config, keyring_refresh_seconds=0)) as svc:
        for item in written:
            assert svc.decrypt(item.envelope, item.context) == item.plaintext, item.context
        versions = [(v.version, v.wrapping_key_id) for v in svc.versions()]
    keys = [key for _, key in versions]
    assert len(set(keys)) == len(keys), f"versions share a wrapping key: {versions}"
    by_version = dict(versions)
    for version, key in reported.items():
        # What a racer was told is what the store keeps.
        assert by_version.get(version) == key, (version, key, by_version.get(version))
    return versions


def test_concurrent_rotations_on_the_embedded_default(
    tmp_path: Path, racer_env_base: dict[str, str]
) -> None:
    data_dir = tmp_path / "data"
    env = dict(racer_env_base)
    init = subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data_dir), "init"],
        env=env,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    config = EncryptionServiceConfig(data_dir=data_dir)
    argv = ["--data-dir", str(data_dir), "keys", "rotate"]
    written, reported, outcomes = run_races(tmp_path, config, env, [[argv] * RACERS] * ROUNDS)
    versions = check_keyring(config, written, reported)
    assert len(reported) >= ROUNDS, "too few rotations succeeded to exercise the race"
    files = {p.name for p in (data_dir / "master-keys").iterdir()}
    for _, key in versions:
        # Each version's master key file is its own and still there.
        assert f"{key.removeprefix('local:')}.key" in files, key
    assert not [n for n in files if not n.endswith(".key")], files
    print(f"\nlocal: {len(versions)} versions, {summary(outcomes)}")


def test_concurrent_rotations_on_kms_with_postgresql(
    tmp_path: Path,
    pg_database: str,
    kms_endpoint: str,
    racer_env_base: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rotation on KMS keeps the current CMK unless told otherwise (KMS never replaces key
    # material under an id); each racer names a CMK of its own so that every version has
    # its own wrapping key and a version given the wrong one shows. Keys of this test only:
    # the server is shared, so no reset.
    client = kms_client(kms_endpoint)

    def new_key(description: str) -> str:
        return str(client.create_key(Description=description)["KeyMetadata"]["Arn"])

    first = new_key("rotation race v1")
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(new_key, [f"rotation race {n}" for n in range(ROUNDS * RACERS)]))
    racer_keys = [made[r * RACERS : (r + 1) * RACERS] for r in range(ROUNDS)]
    all_keys = [first] + [k for row in racer_keys for k in row]
    settings = {
        "GLC_PROVIDER": "aws-kms",
        "GLC_KMS_KEY_IDS": ",".join(all_keys),
        "GLC_KMS_ENDPOINT_URL": kms_endpoint,
        "GLC_KMS_REGION": "us-east-1",
        "GLC_KEY_STORE_URL": pg_database,
        "GLC_DATA_DIR": str(tmp_path / "data"),
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GLC_AUDIT_URL", raising=False)
    env = {**racer_env_base, **settings}
    config = EncryptionServiceConfig.from_env()
    rounds = [[["keys", "rotate", "--wrapping-key-id", key] for key in row] for row in racer_keys]
    written, reported, outcomes = run_races(tmp_path, config, env, rounds)
    versions = check_keyring(config, written, reported)
    assert versions[0] == (1, first)
    assert len(reported) >= ROUNDS, "too few rotations succeeded to exercise the race"
    print(f"\nkms: {len(versions)} versions, {summary(outcomes)}")
