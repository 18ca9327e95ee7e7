"""The rotation autopilot in a fleet of real processes, against a real PostgreSQL.

* A year in minutes: a rotation policy of seconds, three writer processes writing and reading
  through the ORM without pause, and two runner processes competing for the autopilot's lock
  every second, over three full cycles (rotate, re-encrypt, retire). No write is lost, no
  read fails, every row follows each new version, each old version is retired exactly once,
  and no two runners are ever inside their locked section at once.
* A runner killed with SIGKILL in the rotate phase or in the retire phase (before the key
  change, after it returned, inside the retirement, or at a random moment): the next step
  finishes the work without doing it twice (one new version, one retirement, the retired
  versions' stored DEKs deleted) and every row still reads back.
* Instances making their first blind index value together add one blind-index key between
  them, not one each.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy.autopilot import ColumnRegistry, run_autopilot_once
from greenlang_crypto.sqlalchemy.blind_index import lookup
from tests.conftest import database_prefix, libpq_url, pg_private_database
from tests.integration import autopilot_proc
from tests.integration.autopilot_fleet_proc import APP_NAME, read_log
from tests.integration.autopilot_proc import Base, Person, envelope_versions

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROC = "tests.integration.autopilot_fleet_proc"
#: Keyring refresh bound of every process: key changes reach the fleet at once through
#: LISTEN/NOTIFY, and a retirement waits at most this plus one second for stragglers.
REFRESH = "0.5"


@pytest.fixture
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with pg_private_database(database_prefix(request), sqlalchemy_url=True) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url, hide_parameters=True)
    yield eng
    eng.dispose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    LocalKeyProvider(d).create_master_key()
    return d


def _env(data_dir: Path, db_url: str, **policy: float) -> dict[str, str]:
    """The environment of every process: one key store (the application's database)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    env.update(
        {
            "GLC_DATA_DIR": str(data_dir),
            "GLC_KEY_STORE_URL": libpq_url(db_url),
            "GLC_KEYRING_REFRESH_SECONDS": REFRESH,
            "PYTHONPATH": str(REPO),
        }
    )
    env.update({f"GLC_{k.upper()}": str(v) for k, v in policy.items()})
    return env


@pytest.fixture
def fleet_service() -> Iterator[Callable[[dict[str, str]], EncryptionService]]:
    """The test's own instance, configured as the processes are; closed afterwards."""
    made: list[EncryptionService] = []

    def make(env: dict[str, str]) -> EncryptionService:
        svc = EncryptionService(EncryptionServiceConfig.from_env(env))
        autopilot_proc.use_service(svc)
        made.append(svc)
        return svc

    yield make
    autopilot_proc.use_service(None)
    for svc in made:
        svc.close()


def _spawn(
    env: dict[str, str], out: Path, log_name: str, *args: str, stdout: bool = False
) -> subprocess.Popen[str]:
    """Starts a process of the proc module; its stderr goes to ``out``, stdout to a pipe
    only when the test reads it (the writers and runners log to files)."""
    with (out / f"{log_name}.stderr").open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", PROC, *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=err,
            text=True,
        )


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _floor(engine: Engine) -> int:
    """The key store's minimum decryption version."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT min_decryption_version FROM encryption.glc_keyring")
            ).scalar_one()
        )


def _stored_deks(engine: Engine) -> dict[int, int]:
    """Stored DEKs per key version, as the key store holds them."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT key_version, count(*) FROM encryption.glc_deks GROUP BY 1")
        ).all()
    return {int(v): int(n) for v, n in rows}


def _key_versions(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(
            int(v)
            for v in conn.execute(text("SELECT version FROM encryption.glc_key_versions")).scalars()
        )


def _stderr(out: Path, log_name: str) -> str:
    return (out / f"{log_name}.stderr").read_text()


# -- a year in minutes -----------------------------------------------------------------------

#: The policy: a "year" of 8 s, re-encryption due within 6 s of a rotation, retirement 1.5 s
#: after it once every row has moved.
PERIOD, RETIRE_AFTER, REENCRYPT_WITHIN = 8.0, 1.5, 6.0
CYCLES = 3
#: Each runner step re-encrypts for at most this long, at most this many rows per second:
#: a cycle's re-encryption takes several steps, whichever runner wins each one resumes the
#: job where the last step left it, and writers update rows while it is under way. The
#: table grows by some 30 rows a second, so the third cycle's ~800 rows still move within
#: REENCRYPT_WITHIN, and retirement follows before the next rotation: cycles never merge.
STEP_BUDGET, STEP_RATE = 0.4, 800.0


def _expected_rows(logs: dict[str, list[dict[str, Any]]]) -> dict[int, str]:
    """Every row a writer was told is committed, with the last value it committed."""
    out: dict[int, str] = {}
    for records in logs.values():
        for r in records:
            if r["op"] == "put":
                out[r["id"]] = r["email"]
    return out


def test_a_year_in_minutes_three_writers_two_runners_three_cycles(
    engine: Engine, db_url: str, data_dir: Path, tmp_path: Path, fleet_service: Any
) -> None:
    env = _env(
        data_dir,
        db_url,
        rotation_period_seconds=PERIOD,
        retire_after_seconds=RETIRE_AFTER,
        reencrypt_within_seconds=REENCRYPT_WITHIN,
    )
    out = tmp_path / "out"
    out.mkdir()
    # The key store, key version 1 and the blind-index key exist before any process starts
    # (writers making their first index value together would each add an index key: see
    # test_instances_making_their_first_blind_index_together_add_one_index_key). Then this
    # instance leaves the fleet (one that never reloads would block every retirement).
    first = fleet_service(env)
    Base.metadata.create_all(engine)
    first.blind_index_key("ap_people.email")
    assert first.index_key_versions() == [(1, "primary")]
    first.close()
    writers = {
        name: _spawn(env, out, f"writer-{name}", "writer", name, str(i), db_url, str(out))
        for i, name in enumerate("abc", start=1)
    }
    runners: dict[str, subprocess.Popen[str]] = {}
    procs = list(writers.values())
    try:
        # Rows under version 1 before the first rotation can happen.
        _wait_for(
            lambda: (
                all(
                    sum(r["op"] == "put" for r in read_log(out / f"writer-{n}.jsonl")) >= 10
                    for n in writers
                )
                and all(p.poll() is None for p in procs)
            ),
            45,
            "writers did not start",
        )
        runners = {
            name: _spawn(
                env,
                out,
                f"runner-{name}",
                "runner",
                name,
                db_url,
                str(out),
                "1.0",
                str(STEP_BUDGET),
                str(STEP_RATE),
            )
            for name in ("r1", "r2")
        }
        procs += list(runners.values())
        _wait_for(
            lambda: _floor(engine) > CYCLES or any(p.poll() is not None for p in procs),
            75,
            "three cycles did not complete in time",
        )
    finally:
        (out / "stop").touch()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    for name, proc in writers.items():
        assert proc.returncode == 0, _stderr(out, f"writer-{name}")
    for name, proc in runners.items():
        assert proc.returncode == 0, _stderr(out, f"runner-{name}")

    steps = [r for name in runners for r in read_log(out / f"runner-{name}.jsonl")]
    assert not [s for s in steps if "error" in s], [s["error"] for s in steps if "error" in s]
    reports = [s["report"] for s in steps]
    assert not [r for r in reports if r["status"] == "blocked"], reports

    acting = [s for s in steps if s["report"]["status"] != "held"]
    held = [s for s in steps if s["report"]["status"] == "held"]
    # No two runners inside the locked section at once (one clock: the same machine).
    inside = sorted((s["inside"][0], s["inside"][1], s["runner"]) for s in acting)
    for (_, end, who), (start, _, other) in itertools.pairwise(inside):
        assert start >= end, f"{other} entered at {start} while {who} was inside until {end}"
    # Every key change was made by a session holding the lock, within its locked section.
    changes = [(s, c) for s in acting for c in s["key_changes"]]
    assert changes
    for s, c in changes:
        assert c["lock_held"], (s["runner"], c)
        assert s["inside"][0] <= c["start"] <= c["end"] <= s["inside"][1], (s["runner"], c)

    # The two runners competed: both acted, and steps found the lock held by the other.
    assert {s["runner"] for s in acting} == {"r1", "r2"}, "one runner never got the lock"
    assert held, "the runners never met at the lock"
    for s in held:
        assert s["inside"] is None and s["report"]["actions"] == []

    # Three cycles, each rotation and each retirement done exactly once.
    rotations = sorted(
        (a["old_version"], a["new_version"])
        for r in reports
        for a in r["actions"]
        if a["action"] == "rotate"
    )
    assert rotations == [(1, 2), (2, 3), (3, 4)], rotations
    assert sorted(c["new_version"] for _, c in changes if c["what"] == "rotate") == [2, 3, 4]
    retired = sorted(a["below"] for r in reports for a in r["actions"] if a["action"] == "retire")
    assert retired == [2, 3, 4], retired
    assert sorted(c["args"][0] for _, c in changes if c["what"] == "retire") == [2, 3, 4]
    for _, c in changes:
        if c["what"] == "retire":
            below = c["args"][0]
            rows = {int(v): n for v, n in c["rows_by_version"].items()}
            assert rows and all(v >= below for v in rows), (below, rows)
    # Each new version had rows to take over, and the autopilot moved them to it in time.
    for version in (2, 3, 4):
        moved = sum(
            a.get("written", 0)
            for r in reports
            if r["primary_version"] == version
            for a in r["actions"]
            if a["action"] == "reencrypt"
        )
        assert moved > 0, f"no row was re-encrypted to v{version}"
    assert not [r["overdue"] for r in reports if r["overdue"]]

    # The writers: no write refused, every read back of an own committed row right.
    logs = {n: read_log(out / f"writer-{n}.jsonl") for n in writers}
    for name, records in logs.items():
        assert not [r for r in records if r["op"] == "put_err"], name
        gets = [r for r in records if r["op"] == "get"]
        assert gets and not [r for r in gets if not r["ok"]], (
            name,
            [r for r in gets if not r["ok"]],
        )
        assert {r["how"] for r in gets} == {"get", "lookup"}
    # Writes kept coming through the three cycles.
    assert all(sum(r["op"] == "put" for r in records) >= 50 for records in logs.values())

    # Zero writes lost: a fresh instance reads every committed row with its last value, and
    # every row is under the final primary (the retired versions hold none).
    expected = _expected_rows(logs)
    fresh = fleet_service(env)
    assert (fresh.primary_version, fresh.min_decryption_version) == (4, 4)
    with Session(engine) as session:
        stored = {p.id: p.email for p in session.scalars(select(Person))}
    assert stored == expected
    assert envelope_versions(engine) == {4: len(expected)}
    assert set(_stored_deks(engine)) == {4}
    assert _key_versions(engine) == [1, 2, 3, 4]
    # Only data keys were due: the blind-index key was neither rotated nor retired.
    assert fresh.index_key_versions() == [(1, "primary")]


# -- a runner killed in a phase ----------------------------------------------------------------


def _sessions_of_runners(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND (application_name = :app OR application_name LIKE 'glc-autopilot %')"
                ),
                {"app": APP_NAME},
            ).scalar_one()
        )


def _kill_at(
    env: dict[str, str],
    out: Path,
    db_url: str,
    clock_at: float,
    pause: str,
    engine: Engine,
    while_paused: Callable[[int], None],
) -> None:
    """Runs one step in a process that stops at ``pause``; kills it there with SIGKILL.

    At a fixed pause ``while_paused(pid)`` runs first, while the process holds the lock. For
    a ``window`` pause the kill comes at a random moment between the call's entry and a
    little after it returned (the process waits there until killed).
    """
    proc = _spawn(
        {**env, "AP_FLEET_PAUSE": pause}, out, "step", "step", db_url, str(clock_at), stdout=True
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"started": True}, _stderr(out, "step")
        line = proc.stdout.readline()
        assert line, _stderr(out, "step")
        mark = json.loads(line)
        if "window" in pause:
            assert "entered" in mark, mark
            delay = random.uniform(0.0, float(pause.rpartition(":")[2]) + 0.1)
            print(f"killing {delay:.3f} s after the call was entered")  # shown on failure
            time.sleep(delay)
        else:
            assert mark.get("paused") == pause, mark
            while_paused(proc.pid)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    # The server ends the dead client's sessions once it notices the closed sockets (and
    # with them the lock); a COMMIT already sent may still land until then.
    _wait_for(lambda: _sessions_of_runners(engine) == 0, 30, "the killed runner's sessions stayed")


def _fill(engine: Engine, count: int) -> None:
    with Session(engine) as session:
        session.add_all(Person(id=i, email=f"user{i}@example.com") for i in range(1, count + 1))
        session.commit()


def _all_read_back(engine: Engine, count: int) -> None:
    with Session(engine) as session:
        people = session.scalars(select(Person).order_by(Person.id)).all()
    assert [(p.id, p.email) for p in people] == [
        (i, f"user{i}@example.com") for i in range(1, count + 1)
    ]


def _rerun(engine: Engine, svc: EncryptionService, clock_at: float) -> Any:
    return run_autopilot_once(
        engine,
        svc,
        ColumnRegistry.from_metadata(Base),
        clock=lambda: clock_at,
        budget_seconds=30.0,
        batch_size=50,
    )


def _kinds(report: Any, kind: str) -> list[dict[str, Any]]:
    return [a for a in report.actions if a["action"] == kind]


def _competing_step_is_held(
    engine: Engine, svc: EncryptionService, clock_at: float
) -> Callable[[int], None]:
    """A check for the pause: a step of another runner now finds the lock held by the
    paused process, and does nothing, although the same work is due for it."""

    def check(pid: int) -> None:
        before = (_key_versions(engine), _floor(engine))
        other = _rerun(engine, svc, clock_at)
        assert (other.status, other.actions) == ("held", []), other.as_dict()
        assert other.holder is not None and f":{pid} " in other.holder, other.holder
        assert (_key_versions(engine), _floor(engine)) == before

    return check


ROWS = 150


@pytest.mark.parametrize("pause", ["rotate:before", "rotate:after", "rotate:window:0.3"])
def test_a_runner_killed_in_the_rotate_phase_rotates_once_on_rerun(
    pause: str,
    engine: Engine,
    db_url: str,
    data_dir: Path,
    tmp_path: Path,
    fleet_service: Any,
) -> None:
    env = _env(data_dir, db_url, rotation_period_seconds=3600)
    svc = fleet_service(env)
    Base.metadata.create_all(engine)
    _fill(engine, ROWS)
    # The policy's clock, pinned where version 1 has just come due: a version made later
    # (by the killed runner or by the rerun) is not due on it, so a second rotation on the
    # rerun could only be a rotation done twice.
    clock_at = svc.versions()[0].created_at + 3600
    out = tmp_path / "out"
    out.mkdir()
    _kill_at(
        env, out, db_url, clock_at, pause, engine, _competing_step_is_held(engine, svc, clock_at)
    )
    rotated_before_kill = _key_versions(engine) == [1, 2]
    if pause == "rotate:before":
        assert not rotated_before_kill
    elif pause == "rotate:after":
        assert rotated_before_kill
    assert _key_versions(engine) in ([1], [1, 2])
    assert envelope_versions(engine) == {1: ROWS}  # killed before any re-encryption

    rerun = _rerun(engine, svc, clock_at)
    assert rerun.status == "done", rerun.as_dict()
    # The rerun rotates if and only if the killed runner had not.
    expected = (
        [] if rotated_before_kill else [{"action": "rotate", "old_version": 1, "new_version": 2}]
    )
    assert _kinds(rerun, "rotate") == expected, (pause, rerun.as_dict())
    assert _key_versions(engine) == [1, 2]
    assert (svc.primary_version, rerun.primary_version) == (2, 2)
    assert envelope_versions(engine) == {2: ROWS}
    _all_read_back(engine, ROWS)
    again = _rerun(engine, svc, clock_at)
    assert (again.status, again.actions) == ("done", [])
    assert _key_versions(engine) == [1, 2]


@pytest.mark.parametrize(
    "pause", ["retire:before", "retire:mid", "retire:after", "retire:window:0.3"]
)
def test_a_runner_killed_in_the_retire_phase_retires_once_on_rerun(
    pause: str,
    engine: Engine,
    db_url: str,
    data_dir: Path,
    tmp_path: Path,
    fleet_service: Any,
) -> None:
    env = _env(data_dir, db_url, retire_after_seconds=60)
    svc = fleet_service(env)
    Base.metadata.create_all(engine)
    _fill(engine, ROWS)
    svc.rotate()
    # On the real clock the retirement is not due yet: this step only re-encrypts.
    first = run_autopilot_once(engine, svc, ColumnRegistry.from_metadata(Base), batch_size=50)
    assert (first.status, _kinds(first, "retire")) == ("done", []), first.as_dict()
    assert envelope_versions(engine) == {2: ROWS}
    deks = _stored_deks(engine)
    assert deks.get(1, 0) > 0 and deks.get(2, 0) > 0
    # Pinned where version 1's grace period has just passed.
    rotated_at = next(v.rotated_at for v in svc.versions() if v.version == 1)
    assert rotated_at is not None
    clock_at = rotated_at + 60
    out = tmp_path / "out"
    out.mkdir()
    _kill_at(
        env, out, db_url, clock_at, pause, engine, _competing_step_is_held(engine, svc, clock_at)
    )
    floor = _floor(engine)
    if pause == "retire:before":
        assert (floor, _stored_deks(engine).get(1, 0)) == (1, deks[1])
    elif pause == "retire:mid":
        # Killed between raising the minimum and deleting the retired version's DEKs.
        assert (floor, _stored_deks(engine).get(1, 0)) == (2, deks[1])
    elif pause == "retire:after":
        assert (floor, _stored_deks(engine).get(1, 0)) == (2, 0)
    assert floor in (1, 2)

    rerun = _rerun(engine, svc, clock_at)
    assert rerun.status == "done", rerun.as_dict()
    # The rerun retires if and only if the killed runner had not raised the minimum.
    expected = [{"action": "retire", "below": 2}] if floor == 1 else []
    assert _kinds(rerun, "retire") == expected, (pause, rerun.as_dict())
    assert (svc.min_decryption_version, rerun.min_decryption_version) == (2, 2)
    assert _floor(engine) == 2
    assert envelope_versions(engine) == {2: ROWS}
    _all_read_back(engine, ROWS)
    again = _rerun(engine, svc, clock_at)
    assert (again.status, again.actions) == ("done", [])
    assert _floor(engine) == 2
    # The step is finished: the retired version's stored DEKs are gone (the policy deletes
    # them with the retirement), those of the primary untouched.
    assert _stored_deks(engine) == {2: deks[2]}, (pause, _stored_deks(engine))


# -- the first blind index of instances starting together -------------------------------------


def test_instances_making_their_first_blind_index_together_add_one_index_key(
    engine: Engine, db_url: str, data_dir: Path, tmp_path: Path, fleet_service: Any
) -> None:
    # A fleet deployed at once: each instance's first write makes its first blind index
    # value, which creates the index key when there is none. One key, not one per instance:
    # every extra one is a version that lookups must try and the autopilot must retire.
    env = _env(data_dir, db_url)
    first = fleet_service(env)
    Base.metadata.create_all(engine)
    first.close()
    out = tmp_path / "out"
    out.mkdir()
    go = out / "go"
    procs = [
        _spawn(env, out, f"first-{i}", "first-index", db_url, str(i), str(go), stdout=True)
        for i in (1, 2, 3)
    ]
    seen = []
    try:
        for i, p in enumerate(procs, start=1):
            assert p.stdout is not None
            assert json.loads(p.stdout.readline()) == {"ready": True}, _stderr(out, f"first-{i}")
        go.touch()
        for i, p in enumerate(procs, start=1):
            stdout, _ = p.communicate(timeout=30)
            assert p.returncode == 0, _stderr(out, f"first-{i}")
            seen.append(json.loads(stdout.splitlines()[-1])["index_key_versions"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    fresh = fleet_service(env)
    # Every row is found by its value whatever happened.
    with Session(engine) as session:
        for i in (1, 2, 3):
            found = lookup(session, Person.email, f"first{i}@example.com")
            assert [person.id for person in found] == [i]
    assert fresh.index_key_versions() == [(1, "primary")], seen
