"""The campaign's operator: key changes in the documented safe order, as the schedule says.

Run as ``python -m tests.campaign.admin OUT_DIR`` with the ``GLC_*`` variables of the campaign
and ``GLC_CAMPAIGN_DB``. Reads its cycles from ``OUT_DIR/schedule.json`` and stops at the next
step boundary once ``OUT_DIR/stop-admin`` exists.

One cycle: rotate (``keys rotate``); wait until every live instance reports the new primary
(``keys status --json``) or the liveness window has passed; re-encrypt the table until that
succeeds (``db reencrypt``, rerun until it exits 0, or the library's ``reencrypt`` row by row
until a scan finds nothing below the new version); retire the older versions (``keys retire
--below N --delete-stored-deks``, retried while refused); sometimes rewrap (``keys rewrap``).
A step whose re-encryption gave up skips the retirement: the safe order forbids it.

Every step is logged to ``OUT_DIR/admin.jsonl`` with the wall clock before (``t0``) and after
(``t1``) it; this process is never under faketime, so that is the database host's clock. An
acknowledged step is one whose command exited 0: ``t1`` is after its commit.

A running ``db reencrypt`` is announced in ``OUT_DIR/job.json`` (pid and a serial number) for
the nemesis, which may SIGKILL it. The file is removed after the job exited and *before* it is
reaped, so a pid read from it while it exists still names that job (see the nemesis).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.campaign.common import AAD, COLUMN, LIVENESS, TABLE, TENANT, JsonLog, context, wall

CLI_TIMEOUT = 120.0
#: How long one cycle keeps retrying its re-encryption or its retirement before giving up.
STEP_DEADLINE = 90.0


class Admin:
    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.log = JsonLog(out_dir / "admin.jsonl")
        self.db_url = os.environ["GLC_CAMPAIGN_DB"]
        self.jobs = 0
        self._svc: Any = None
        (out_dir / "jobs").mkdir(exist_ok=True)

    # -- plumbing ------------------------------------------------------------------------

    def stopping(self) -> bool:
        return (self.out / "stop-admin").exists()

    def sleep(self, seconds: float) -> bool:
        """Sleeps unless asked to stop; returns whether to go on."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.stopping():
                return False
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        return not self.stopping()

    def cli(self, *args: str) -> tuple[int, str, str]:
        cmd = [sys.executable, "-m", "greenlang_crypto", *args]
        try:
            done = subprocess.run(
                cmd, check=False, capture_output=True, text=True, timeout=CLI_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            return -1, "", f"timed out after {CLI_TIMEOUT}s"
        # The last line says what failed (an error message, or a traceback's exception).
        lines = done.stderr.strip().splitlines()
        return done.returncode, done.stdout, lines[-1][-300:] if lines else ""

    def status(self) -> dict[str, Any] | None:
        rc, out, _ = self.cli("keys", "status", "--json")
        if rc != 0:
            return None
        doc: dict[str, Any] = json.loads(out)
        return doc

    # -- steps ---------------------------------------------------------------------------

    def rotate(self, cycle: int, known_primary: int) -> int | None:
        """Rotates; returns the new primary version (None: asked to stop)."""
        while not self.stopping():
            t0 = wall()
            rc, out, err = self.cli("keys", "rotate")
            t1 = wall()
            found = re.search(r"v(\d+) -> v(\d+)", out)
            if rc == 0 and found:
                new = int(found.group(2))
                self.log.write(
                    step="rotate",
                    cycle=cycle,
                    t0=t0,
                    t1=t1,
                    ok=True,
                    old_version=int(found.group(1)),
                    new_version=new,
                )
                return new
            self.log.write(step="rotate", cycle=cycle, t0=t0, t1=t1, ok=False, rc=rc, err=err)
            # The rotation may have committed before the command failed: a primary above the
            # one known before is that rotation (not acknowledged, but in force).
            doc = self.status()
            if doc is not None and doc["primary_version"] > known_primary:
                new = int(doc["primary_version"])
                self.log.write(step="rotate_observed", cycle=cycle, t1=wall(), new_version=new)
                return new
            self.sleep(1.0)
        return None

    def converge(self, cycle: int, new: int, rotated_at: float) -> bool:
        """Waits until every live instance reports ``new`` or the liveness window passed."""
        deadline = rotated_at + LIVENESS + 5.0
        behind: list[str] = []
        while not self.stopping():
            t0 = wall()
            doc = self.status()
            t1 = wall()
            if doc is not None:
                behind = [
                    f"{i['pid']}:v{i['primary_version']}"
                    for i in doc["instances"]
                    if i["live"] and i["primary_version"] < new
                ]
                if not behind:
                    self.log.write(
                        step="converge",
                        cycle=cycle,
                        t0=t0,
                        t1=t1,
                        ok=True,
                        reason="reported",
                        new_version=new,
                    )
                    return True
            if t1 > deadline:
                self.log.write(
                    step="converge",
                    cycle=cycle,
                    t0=t0,
                    t1=t1,
                    ok=True,
                    reason="window",
                    new_version=new,
                    behind=behind,
                    status_ok=doc is not None,
                )
                return True
            self.sleep(0.3)
        return False

    def run_job(self, cycle: int, new: int) -> bool:
        """``db reencrypt`` until it exits 0 (each run logged with its exit code)."""
        url = self.db_url.replace("postgresql://", "postgresql+psycopg://", 1)
        args = [
            "db",
            "reencrypt",
            "--url",
            url,
            "--table",
            TABLE,
            "--column",
            COLUMN,
            "--tenant",
            TENANT,
            "--data-class",
            "pii",
            "--batch-size",
            "100",
            "--worker",
            "campaign-admin",
            "--no-progress",
        ]
        started = time.monotonic()
        while not self.stopping():
            self.jobs += 1
            n = self.jobs
            t0 = wall()
            with (
                (self.out / "jobs" / f"job-{n}.out").open("wb") as out,
                (self.out / "jobs" / f"job-{n}.err").open("wb") as err,
            ):
                proc = subprocess.Popen(
                    [sys.executable, "-m", "greenlang_crypto", *args], stdout=out, stderr=err
                )
            announce = self.out / "job.json"
            tmp = announce.with_suffix(".tmp")
            tmp.write_text(json.dumps({"pid": proc.pid, "n": n, "started": t0}))
            tmp.replace(announce)
            try:
                # Wait for the exit without reaping, withdraw the announcement, then reap:
                # while job.json exists its pid cannot belong to another process.
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            finally:
                announce.unlink(missing_ok=True)
            rc = proc.wait()
            t1 = wall()
            summary = _last_json((self.out / "jobs" / f"job-{n}.out").read_text())
            self.log.write(
                step="job",
                cycle=cycle,
                job=n,
                t0=t0,
                t1=t1,
                ok=rc == 0,
                rc=rc,
                new_version=new,
                summary=summary,
            )
            if rc == 0:
                return True
            if time.monotonic() - started > STEP_DEADLINE:
                break
            self.sleep(0.5)
        self.log.write(step="reencrypt_gave_up", cycle=cycle, t1=wall(), mode="job")
        return False

    def service(self) -> Any:
        if self._svc is None:
            from greenlang_crypto.config import EncryptionServiceConfig
            from greenlang_crypto.service import EncryptionService

            self._svc = EncryptionService(EncryptionServiceConfig.from_env())
        return self._svc

    def library_reencrypt(self, cycle: int, new: int) -> bool:
        """The library's ``reencrypt`` on every row below ``new``, until a scan finds none."""
        import psycopg

        from greenlang_crypto import parse_envelope
        from greenlang_crypto.exceptions import GreenlangCryptoError

        ctx = context()
        started = time.monotonic()
        moved = 0
        while not self.stopping() and time.monotonic() - started < STEP_DEADLINE:
            t0 = wall()
            try:
                svc = self.service()
                svc.refresh_keyring()
                if svc.primary_version < new:
                    raise RuntimeError(f"this instance's primary is v{svc.primary_version}")
                with psycopg.connect(self.db_url, autocommit=True, connect_timeout=2) as conn:
                    rows = conn.execute(f"SELECT id, {COLUMN} FROM {TABLE}").fetchall()
                    old = [(i, bytes(e)) for i, e in rows if parse_envelope(e).key_version < new]
                    if not old:
                        self.log.write(
                            step="library_reencrypt",
                            cycle=cycle,
                            t0=t0,
                            t1=wall(),
                            ok=True,
                            moved=moved,
                            new_version=new,
                        )
                        return True
                    for pk, envelope in old:
                        fresh = svc.reencrypt(envelope, ctx, associated_data=AAD)
                        if parse_envelope(fresh).key_version < new:
                            raise RuntimeError("reencrypt sealed below the new primary")
                        # Compare-and-swap: a row changed meanwhile is read again next scan.
                        cur = conn.execute(
                            f"UPDATE {TABLE} SET {COLUMN} = %s WHERE id = %s AND {COLUMN} = %s",
                            (fresh, pk, envelope),
                        )
                        moved += cur.rowcount
            except (GreenlangCryptoError, psycopg.Error, RuntimeError) as exc:
                self.log.write(
                    step="library_reencrypt",
                    cycle=cycle,
                    t0=t0,
                    t1=wall(),
                    ok=False,
                    err=f"{type(exc).__name__}: {exc}"[:300],
                )
                self.sleep(1.0)
        self.log.write(step="reencrypt_gave_up", cycle=cycle, t1=wall(), mode="library")
        return False

    def retire(self, cycle: int, below: int) -> bool:
        started = time.monotonic()
        while not self.stopping() and time.monotonic() - started < STEP_DEADLINE:
            t0 = wall()
            rc, _, err = self.cli("keys", "retire", "--below", str(below), "--delete-stored-deks")
            t1 = wall()
            self.log.write(
                step="retire",
                cycle=cycle,
                t0=t0,
                t1=t1,
                ok=rc == 0,
                rc=rc,
                below=below,
                err=None if rc == 0 else err,
            )
            if rc == 0:
                return True
            self.sleep(1.0)
        return False

    def rewrap(self, cycle: int) -> None:
        for _ in range(5):
            if self.stopping():
                return
            t0 = wall()
            rc, out, err = self.cli("keys", "rewrap")
            self.log.write(
                step="rewrap",
                cycle=cycle,
                t0=t0,
                t1=wall(),
                ok=rc == 0,
                rc=rc,
                out=out.strip()[-200:],
                err=None if rc == 0 else err,
            )
            if rc == 0:
                return
            self.sleep(1.0)

    # -- the schedule --------------------------------------------------------------------

    def run(self, cycles: list[dict[str, Any]]) -> None:
        self.log.write(step="start", t1=wall())
        primary = 1
        for k, cycle in enumerate(cycles):
            if not self.sleep(cycle["pause"]):
                break
            new = self.rotate(k, primary)
            if new is None:
                break
            primary = new
            rotated_at = wall()
            if not self.converge(k, new, rotated_at):
                break
            # A write that began just before its instance converged is still on its way to
            # the table: let it land before the re-encryption scans.
            if not self.sleep(1.0):
                break
            if cycle["reencrypt"] == "job":
                done = self.run_job(k, new)
            else:
                done = self.library_reencrypt(k, new)
            if self.stopping():
                break
            if done:
                self.retire(k, new)
            if cycle["rewrap"]:
                self.rewrap(k)
        if self._svc is not None:
            self._svc.close()
        self.log.write(step="stop", t1=wall())
        self.log.close()


def _last_json(text: str) -> Any:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def main(out_dir: Path) -> None:
    schedule = json.loads((out_dir / "schedule.json").read_text())
    Admin(out_dir).run(schedule["admin"])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
