"""A fleet of writers through a PostgreSQL restart, then a full key rotation.

Three writer processes seal values in a loop (stored and inline DEKs, now and then under a
fresh context so that a stored DEK has to be written) and decrypt older ones; each logs every
acknowledged envelope with its plaintext. PostgreSQL is stopped for 10 s. Once it is back an
operator rotates, waits the propagation bound, re-encrypts what the old version sealed and
retires it, deleting its stored DEKs.

What must hold:

- no acknowledged write is lost: a fresh process decrypts every logged envelope, directly or
  through its re-encrypted copy;
- during the outage no writer seals once the fence bound has passed (it cannot confirm its
  keyring), and what fails, fails with the typed KeyStoreUnavailableError, never with a raw
  driver error;
- decryption of keys already cached keeps working throughout, and nothing fails afterwards
  except deliberately retired values;
- every writer reconnects by itself and is on the new primary within the propagation bound
  of the rotation, as its own log and ``keys status --json`` show.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.faults.conftest import FENCE, REFRESH, Rig
from tests.integration.faults.fault_proc import read_log

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

WRITERS = ("a", "b", "c")
DOWN_SECONDS = 10.0
#: The propagation bound: the fence bound (after it an instance cannot seal on a view older
#: than the change) plus scheduling slack for five Python processes on two cores.
BOUND = FENCE + 1.0


class _Problems:
    """Violations by kind: how many, and the first example of each (a readable failure)."""

    def __init__(self) -> None:
        self.found: dict[str, list[Any]] = {}

    def add(self, who: str, kind: str, example: Any) -> None:
        self.found.setdefault(f"{who}: {kind}", []).append(example)

    def report(self) -> str:
        lines = [f"{key} (x{len(found)}): {_brief(found[0])}" for key, found in self.found.items()]
        return "\n".join(lines)


def _brief(example: Any) -> Any:
    """A log record without its long fields (the envelope)."""
    if isinstance(example, dict):
        return {k: v for k, v in example.items() if k not in ("env",)}
    return example


def _failed(record: dict[str, Any]) -> bool:
    return record["op"] == "enc_err" or (record["op"] == "dec" and not record["ok"])


def test_writers_survive_a_postgresql_restart(rig: Rig) -> None:
    writers = {name: rig.spawn("writer", name) for name in WRITERS}
    logs = {name: rig.out / f"log-{name}.jsonl" for name in WRITERS}
    for name, proc in writers.items():
        rig.await_writes(proc, name, 20)
    # Let every writer run a few refresh periods first, as a fleet in service has: each of
    # its threads (the keyring's included) then holds connections from before the outage.
    time.sleep(3 * REFRESH)
    for name, proc in writers.items():
        assert proc.poll() is None, rig.stderr("writer", name)

    stop_begin = time.time()
    rig.cluster.stop()
    stop_end = time.time()
    time.sleep(DOWN_SECONDS)
    start_begin = time.time()
    rig.cluster.start()
    back = time.time()

    rig.cli_ok("keys", "rotate")
    rotated = time.time()
    new = int(rig.keys_status()["primary_version"])
    assert new == 2

    time.sleep(max(0.0, rotated + BOUND - time.time()))
    status = rig.keys_status()
    rig.run("reencrypt", str(new))
    retire_begin = time.time()
    rig.cli_ok("keys", "retire", "--below", str(new), "--delete-stored-deks")
    time.sleep(1.5)  # the writers keep going for a while under the retirement
    rig.stop_all()
    rig.run("verify")

    records = {name: read_log(path) for name, path in logs.items()}
    problems = _Problems()
    for name, proc in writers.items():
        if proc.returncode != 0:
            problems.add(name, "exited with an error", rig.stderr("writer", name)[-1500:])

    for name, log in records.items():
        for r in log:
            if r["op"] == "close_err":
                problems.add(name, "close() raised", r)
            if not _failed(r):
                continue
            if not r["typed"]:
                problems.add(name, "raw exception escaped the library", r)
            elif r["op"] == "dec":
                # Cached keys decrypt throughout; only deliberately retired values may fail.
                retired = (
                    r["v"] < new
                    and r["err"] in ("KeyRetiredError", "KeyNotFoundError")
                    and r["t_end"] >= retire_begin
                )
                if not retired:
                    problems.add(name, "decrypt failed", r)
            elif not (
                r["err"] == "KeyStoreUnavailableError" and stop_begin <= r["t"] <= back + BOUND
            ):
                problems.add(name, "encrypt failed outside the outage", r)

        # Self-fencing: once the fence bound has passed without a confirmed keyring read,
        # nothing is sealed until PostgreSQL is back. A seal happens just before the call
        # returns, so a value acknowledged in that span was sealed in it, whenever its call
        # started (a call may wait out the outage in the store's retries, and that is fine).
        fenced_from = stop_end + FENCE + 0.5
        unfenced = [r for r in log if r["op"] == "enc" and fenced_from <= r["t_end"] < start_begin]
        if unfenced:
            problems.add(name, f"{len(unfenced)} value(s) sealed past the fence", unfenced[0])
        # The outage did reach this writer: it had an operation under way after the fence.
        if not any(r["t_end"] >= fenced_from and r["t"] < start_begin for r in log):
            problems.add(name, "no operation was under way during the outage", None)

        # On the new primary within the bound of the rotation, and never back on the old.
        first_new = min(
            (r["t_end"] for r in log if r["op"] == "enc" and r["v"] >= new), default=None
        )
        if first_new is None or first_new > rotated + BOUND:
            lag = None if first_new is None else round(first_new - rotated, 2)
            problems.add(name, "not on the new primary within the bound", lag)
        late_old = [
            r for r in log if r["op"] == "enc" and r["v"] < new and r["t"] > rotated + BOUND
        ]
        if late_old:
            problems.add(name, f"{len(late_old)} old-version write(s) after the bound", late_old[0])

    # Every writer is registered again (heartbeats resumed) and reports the new primary.
    pids = {proc.pid: name for name, proc in writers.items()}
    seen = {i["pid"]: i for i in status["instances"] if i["pid"] in pids and i["live"]}
    for pid, name in pids.items():
        row = seen.get(pid)
        if row is None or row["primary_version"] != new:
            problems.add(name, "keys status: not live on the new primary", row)

    # Zero acknowledged writes lost.
    verified = json.loads((rig.out / "verify.json").read_text())
    lost = [r for r in verified if not r["ok"]]
    if lost:
        problems.add("all", f"{len(lost)} acknowledged write(s) lost", lost[:3])
    moved = json.loads((rig.out / "reencrypt.json").read_text())["moved"]

    assert not problems.found, problems.report()
    assert len(verified) > 100
    assert moved > 0 and any(r["via"] == "reencrypted" for r in verified)
