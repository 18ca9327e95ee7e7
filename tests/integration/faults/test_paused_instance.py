"""An instance suspended (SIGSTOP) across a rotation and a retirement, resumed mid-loop.

A suspended process sends no heartbeat, so once its last one is older than the liveness
window a retirement no longer waits for it: from the fleet's point of view it is gone. When
it resumes it is still in its encrypt loop, with the retired version's DEKs in its caches and
a keyring view from before the rotation. Self-fencing must keep it from sealing a single value
under the retired version: its last confirmed keyring read is older than the fence bound, so
it must confirm (and so load the rotation) before it seals again.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.integration.faults.conftest import LIVENESS, Rig, wait_for
from tests.integration.faults.fault_proc import read_log

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

#: How long the resumed worker keeps sealing before it is stopped.
RUN_AFTER_RESUME = 3.0


def test_resumed_instance_never_seals_under_a_retired_version(rig: Rig) -> None:
    worker = rig.spawn("tight", "w")
    log = rig.out / "log-w.jsonl"
    rig.await_writes(worker, "w", 200)

    os.kill(worker.pid, signal.SIGSTOP)
    stopped = time.time()
    # Right after the stop its heartbeat is recent: it still counts as live, on version 1.
    row = next(i for i in rig.keys_status()["instances"] if i["pid"] == worker.pid)
    assert row["live"] and row["primary_version"] == 1, row
    rig.cli_ok("keys", "rotate")
    new = int(rig.keys_status()["primary_version"])
    assert new == 2

    # Wait until its heartbeat has aged past the liveness window; the retirement is then
    # allowed, and deletes the retired version's stored DEKs.
    def gone() -> bool:
        return not any(i["pid"] == worker.pid and i["live"] for i in rig.keys_status()["instances"])

    wait_for(gone, LIVENESS + 30, "the suspended worker never stopped counting as live")
    assert time.time() - stopped >= LIVENESS - 1.0, "counted dead before the liveness window"
    rig.cli_ok("keys", "retire", "--below", str(new), "--delete-stored-deks")

    resumed = time.time()
    os.kill(worker.pid, signal.SIGCONT)
    time.sleep(RUN_AFTER_RESUME)
    rig.stop_all()
    assert worker.returncode == 0, rig.stderr("tight", "w")
    rig.run("verify")

    records = read_log(log)
    after = [r for r in records if r["op"] == "enc" and r["t_end"] >= resumed]
    under_retired = [
        {"seq": r["seq"], "v": r["v"], "started_before_stop": r["t"] < stopped,
         "ms_after_resume": round(1000 * (r["t_end"] - resumed), 1)}
        for r in after
        if r["v"] < new
    ]  # fmt: skip
    errors = [r for r in records if r["op"] in ("enc_err", "close_err")]
    assert not under_retired, (len(under_retired), under_retired[:10])
    assert not errors, errors[:5]
    # The worker did resume its loop: the check above was not vacuous.
    assert sum(1 for r in after if r["v"] == new) >= 100

    # Everything sealed after the resume decrypts in a fresh process.
    verified = {r["seq"]: r for r in json.loads((rig.out / "verify.json").read_text())}
    lost = [verified[r["seq"]] for r in after if not verified[r["seq"]]["ok"]]
    assert not lost, lost[:5]
