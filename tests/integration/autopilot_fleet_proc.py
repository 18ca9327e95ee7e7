"""The processes of the autopilot fleet tests: writers, competing runners and one paused step.

Every process builds its own service from ``GLC_*`` variables over the shared key store, as a
deployed instance would, and uses the model of :mod:`tests.integration.autopilot_proc`
(``ap_people``, an encrypted, blind-indexed ``email``).

* ``python -m tests.integration.autopilot_fleet_proc writer NAME INDEX DB_URL OUT_DIR``:
  inserts rows and updates its own earlier ones through the ORM until ``OUT_DIR/stop``
  exists, reading one of its rows back after every write (by primary key or by blind-index
  lookup). Each line of ``writer-NAME.jsonl`` is written only after the commit or the read
  returned, so a ``put`` line is a write the application was told is durable.
* ``... runner NAME DB_URL OUT_DIR INTERVAL BUDGET MAX_ROWS_PER_SECOND``: one autopilot
  step per tick of a shared ``INTERVAL``-second wall-clock grid (so that competing runners
  start together and race for the lock) until ``OUT_DIR/stop`` exists, each with that
  re-encryption budget and rate cap; one line per step in ``runner-NAME.jsonl``.
* ``... step DB_URL CLOCK_AT``: one step, its report printed as one JSON line. ``CLOCK_AT``
  (UNIX seconds) pins the policy's clock (``0``: the real clock), so that a rerun in the test
  sees the same due dates. With ``AP_FLEET_PAUSE`` set the step stops at a point of a key
  change and waits there to be killed (see :func:`_install_pause`).
* ``... first-index DB_URL ROW_ID GO_FILE``: a fresh instance that writes one row, its first
  blind index value, once ``GO_FILE`` exists.

The step's own timing comes from hooks installed here, never from the library: the interval
during which ``run_autopilot_once`` is inside its locked section, and for each key change
whether this process's lock session held the advisory lock at that moment (read from
``pg_locks`` on a connection of its own).
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from greenlang_crypto.exceptions import GreenlangCryptoError
from greenlang_crypto.sqlalchemy import autopilot
from greenlang_crypto.sqlalchemy.autopilot import (
    AUTOPILOT_LOCK_KEY,
    ColumnRegistry,
    run_autopilot_once,
)
from greenlang_crypto.sqlalchemy.blind_index import lookup
from tests.integration.autopilot_proc import Base, Person, envelope_versions, service

#: The application name of the processes' own engines (the lock session renames itself).
APP_NAME = "autopilot-fleet-proc"


def read_log(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a log (a killed process may leave half a line)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _engine(url: str) -> Engine:
    return create_engine(url, hide_parameters=True, connect_args={"application_name": APP_NAME})


def _emit(log: TextIO, record: dict[str, Any]) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()


# -- writers ---------------------------------------------------------------------------------


def writer(name: str, index: int, url: str, out_dir: Path) -> None:
    """Writes and reads back through the ORM until told to stop (see the module doc)."""
    svc = service()
    engine = _engine(url)
    stop = out_dir / "stop"
    rng = random.Random(name)
    committed: dict[int, str] = {}
    ids: list[int] = []
    seq = 0
    with (out_dir / f"writer-{name}.jsonl").open("a") as log:
        while not stop.exists():
            # Updates of earlier rows race the re-encryption job's compare-and-swap writes;
            # inserts under a primary the job has already passed make it come back.
            update = bool(ids) and rng.random() < 0.3
            if update:
                row_id = rng.choice(ids)
            else:
                row_id = index * 1_000_000 + seq
                seq += 1
            email = f"{name}.{row_id}.{time.monotonic_ns()}@example.com"
            started = time.time()
            try:
                with Session(engine) as session:
                    if update:
                        person = session.get(Person, row_id)
                        assert person is not None, f"row {row_id} vanished"
                        person.email = email
                    else:
                        session.add(Person(id=row_id, email=email))
                    session.commit()
            except (GreenlangCryptoError, AssertionError) as exc:
                _emit(log, {"op": "put_err", "id": row_id, "t": started, "err": repr(exc)})
                continue
            committed[row_id] = email
            if not update:
                ids.append(row_id)
            _emit(log, {"op": "put", "id": row_id, "email": email, "t": started})
            _read_back(log, engine, rng, committed, ids)
            time.sleep(0.05)
    engine.dispose()
    svc.close()


def _read_back(
    log: TextIO,
    engine: Engine,
    rng: random.Random,
    committed: dict[int, str],
    ids: list[int],
) -> None:
    row_id = rng.choice(ids)
    expected = committed[row_id]
    how = "lookup" if rng.random() < 0.5 else "get"
    started = time.time()
    err = None
    try:
        with Session(engine) as session:
            if how == "get":
                person = session.get(Person, row_id)
                got = None if person is None else (person.id, person.email)
            else:
                found = lookup(session, Person.email, expected)
                got = (found[0].id, found[0].email) if len(found) == 1 else None
        ok = got == (row_id, expected)
    except GreenlangCryptoError as exc:
        ok, err = False, repr(exc)
    _emit(log, {"op": "get", "id": row_id, "how": how, "ok": ok, "err": err, "t": started})


# -- the step's witnesses --------------------------------------------------------------------

#: What the hooks saw during the current step (reset before each).
_seen: dict[str, Any] = {"inside": None, "key_changes": []}


def _lock_label() -> str:
    # The name the autopilot's lock session gives itself (application_name, 63 bytes).
    return f"glc-autopilot {socket.gethostname()}:{os.getpid()}"[:63]


def _holds_lock(engine: Engine) -> bool:
    """Whether this process's lock session holds the autopilot lock now (per pg_locks)."""
    with engine.connect() as conn:
        held = conn.execute(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 "
                "AND l.objid::bigint = :k AND l.objsubid = 1 AND a.application_name = :n "
                "AND l.database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database())"
            ),
            {"k": AUTOPILOT_LOCK_KEY, "n": _lock_label()},
        ).scalar_one()
    return bool(held)


def _install_witnesses(svc: Any, engine: Engine) -> None:
    """Times the locked section and checks the lock (and, before a retirement, the rows'
    versions) at every key change of this process.

    The locked section is ``_Step.run``: it is only entered once the lock is taken and the
    lock is released only after it returned, so the intervals of two runners must never
    overlap.
    """
    step_cls: Any = autopilot._Step
    real_run = step_cls.run

    def timed_run(step: Any) -> None:
        _seen["inside"] = [time.time(), None]
        try:
            real_run(step)
        finally:
            _seen["inside"][1] = time.time()

    step_cls.run = timed_run

    def witnessed(what: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            record = {"what": what, "args": list(args), "lock_held": _holds_lock(engine)}
            if what == "retire":
                # What the rows said just before: the retirement must find none under the
                # versions it retires (read from the envelopes, not from the library's count).
                record["rows_by_version"] = envelope_versions(engine)
            record["start"] = time.time()
            result = real(*args, **kwargs)
            record["end"] = time.time()
            if what == "rotate":
                record["new_version"] = result.new_version
            _seen["key_changes"].append(record)
            return result

        return call

    svc.rotate = witnessed("rotate", svc.rotate)
    svc.retire_versions_below = witnessed("retire", svc.retire_versions_below)


def _reset_seen() -> None:
    _seen["inside"] = None
    _seen["key_changes"] = []


def _step(engine: Engine, svc: Any, clock: Callable[[], float], **kw: Any) -> dict[str, Any]:
    _reset_seen()
    started = time.time()
    record: dict[str, Any] = {"pid": os.getpid(), "start": started}
    try:
        report = run_autopilot_once(
            engine, svc, ColumnRegistry.from_metadata(Base), clock=clock, **kw
        )
        record["report"] = report.as_dict()
    except Exception as exc:  # recorded for the test, which fails on it
        record["error"] = repr(exc)
    record["end"] = time.time()
    record["inside"] = _seen["inside"]
    record["key_changes"] = list(_seen["key_changes"])
    return record


# -- runners ---------------------------------------------------------------------------------


def runner(name: str, url: str, out_dir: Path, interval: float, budget: float, rate: float) -> None:
    """One step per tick of a wall-clock grid shared with the other runners, until stopped."""
    svc = service()
    engine = _engine(url)
    _install_witnesses(svc, engine)
    stop = out_dir / "stop"
    with (out_dir / f"runner-{name}.jsonl").open("a") as log:
        while not stop.exists():
            now = time.time()
            time.sleep(math.ceil(now / interval) * interval - now)
            if stop.exists():
                break
            record = _step(
                engine,
                svc,
                time.time,
                budget_seconds=budget,
                max_rows_per_second=rate or None,
                batch_size=50,
            )
            _emit(log, {"runner": name, **record})
    engine.dispose()
    svc.close()


# -- one step that can be paused at a key change ---------------------------------------------


def _pause(point: str) -> None:
    print(json.dumps({"paused": point, "t": time.time()}), flush=True)
    time.sleep(300)  # the test kills the process here


def _install_pause(svc: Any, spec: str) -> None:
    """Makes the step stop at ``PHASE:WHERE`` of a key change (``AP_FLEET_PAUSE``).

    ``rotate:before``/``rotate:after`` and ``retire:before``/``retire:after`` stop just
    before the call or just after it returned (before the step goes on); ``retire:mid``
    stops inside the retirement, after the minimum was raised and before the retired
    versions' stored DEKs are deleted. ``PHASE:window:PRE`` prints ``entered`` at the call,
    sleeps ``PRE`` seconds, makes the call, prints ``returned`` and then waits to be killed:
    the test kills it at a random moment of that window.
    """
    phase, _, where = spec.partition(":")
    attr = {"rotate": "rotate", "retire": "retire_versions_below"}[phase]
    real = getattr(svc, attr)
    if where == "mid":
        store = svc._runtime.store
        real_delete = store.delete_deks_below

        def delete_paused(*args: Any, **kwargs: Any) -> Any:
            _pause(spec)
            return real_delete(*args, **kwargs)

        store.delete_deks_below = delete_paused
        return
    window = where.startswith("window:")
    pre = float(where.partition(":")[2]) if window else 0.0

    def paused(*args: Any, **kwargs: Any) -> Any:
        if window:
            print(json.dumps({"entered": spec, "t": time.time()}), flush=True)
            time.sleep(pre)
        elif where == "before":
            _pause(spec)
        result = real(*args, **kwargs)
        if window:
            print(json.dumps({"returned": spec, "t": time.time()}), flush=True)
            time.sleep(300)
        elif where == "after":
            _pause(spec)
        return result

    setattr(svc, attr, paused)


def step(url: str, clock_at: float) -> int:
    """One step (see the module doc); returns its exit code."""
    svc = service()
    engine = _engine(url)
    _install_witnesses(svc, engine)
    pause = os.environ.get("AP_FLEET_PAUSE")
    if pause:
        # Wrapped around the witnesses: a pause before the call comes before the witness's
        # lock check, and one after it once the key change has returned.
        _install_pause(svc, pause)
    print(json.dumps({"started": True}), flush=True)
    clock = (lambda: clock_at) if clock_at else time.time
    record = _step(engine, svc, clock, budget_seconds=30.0, batch_size=50)
    print(json.dumps(record), flush=True)
    engine.dispose()
    svc.close()
    return int(record.get("report", {}).get("exit_code", 3))


def first_index(url: str, row_id: int, go: Path) -> None:
    """A freshly started instance writes its first row (its first blind index value) once
    ``go`` exists, so that several start their first write together."""
    svc = service()
    engine = _engine(url)
    print(json.dumps({"ready": True}), flush=True)
    while not go.exists():
        time.sleep(0.001)
    with Session(engine) as session:
        session.add(Person(id=row_id, email=f"first{row_id}@example.com"))
        session.commit()
    print(json.dumps({"index_key_versions": svc.index_key_versions()}), flush=True)
    engine.dispose()
    svc.close()


def main(argv: list[str]) -> int:
    mode, *rest = argv
    if mode == "writer":
        writer(rest[0], int(rest[1]), rest[2], Path(rest[3]))
    elif mode == "runner":
        runner(rest[0], rest[1], Path(rest[2]), float(rest[3]), float(rest[4]), float(rest[5]))
    elif mode == "step":
        return step(rest[0], float(rest[1]))
    elif mode == "first-index":
        first_index(rest[0], int(rest[1]), Path(rest[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
