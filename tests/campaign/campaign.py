"""A fault campaign: writers and an operator on a private cluster, a nemesis, a checker.

Run ``python -m tests.campaign.campaign [--out DIR]`` from the repository root (``make faults``
runs the 15-minute one). ``GLC_CAMPAIGN_SEED`` fixes the seed (default: random, always
printed) and ``GLC_CAMPAIGN_SECONDS`` the length of the fault phase (default 120). The whole
schedule (every nemesis fault and every admin cycle, with its time) is drawn from the seed
before anything starts, so a failing run is replayed with the seed and length it printed;
what the processes then do is not deterministic (scheduling, timings), only what is done to
them and when.

Actors, each a real process except the nemesis:

* three writers (``writer.py``) encrypt and insert without pause, recording every call;
* the admin (``admin.py``) rotates, re-encrypts, retires and rewraps in the documented order;
* the nemesis (threads of this process, one per fault kind) restarts PostgreSQL (down 2-10 s),
  SIGSTOPs a writer for 5-30 s, SIGKILLs a running ``db reencrypt`` job, and steps a writer's
  wall clock (libfaketime; skipped with a note where it is not installed).

Afterwards the nemesis heals everything, the actors stop, and the checker (``checker.py``)
decides from the table and the histories. The report goes to stdout and ``DIR/report.json``;
the exit status is 1 when the checker found a violation or a fault kind was never injected
(a campaign that injected nothing proves nothing).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.campaign.admin import STEP_DEADLINE
from tests.campaign.common import CREATE_TABLE, REFRESH, JsonLog, read_jsonl, wall
from tests.pgcluster import PgCluster, private_cluster

REPO = Path(__file__).resolve().parents[2]
WRITERS = ("a", "b", "c")
CLOCK_OFFSETS = ("+1h", "-10m", "+10m", "-1h", "+90s", "-90s")
FAULT_KINDS = ("pg_restart", "pause", "kill_job", "clock_step")
#: Rows the writers aim at over a whole campaign: every rotation re-encrypts the table, and a
#: job must be able to finish between two PostgreSQL restarts (a job does 2-5 thousand rows
#: per second here).
TABLE_ROWS = 25_000
#: How long after the last fault healed every writer must have committed a value again.
RECOVERY_SECONDS = 30.0


def faketime_library() -> str | None:
    """The libfaketime preload library, or None when it is not installed."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    found += sorted(glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    return found[0] if found else None


# -- the schedule ----------------------------------------------------------------------------


def make_schedule(seed: int, seconds: float, *, clock_steps: bool = True) -> dict[str, Any]:
    """Every fault and admin cycle of a campaign, drawn from ``seed`` alone.

    Times are seconds after the fault phase begins. Each fault kind has its own timeline (its
    faults never overlap each other; faults of different kinds may). The first fault of each
    kind comes early enough that even a 2-minute campaign injects every kind.
    """
    end = float(seconds)
    nemesis: list[dict[str, Any]] = []

    def stream(name: str) -> random.Random:
        # One stream per timeline, so that leaving one out (no libfaketime) or changing one
        # leaves every other timeline of the seed as it was.
        return random.Random(f"{seed}:{name}")

    rng = stream("pg_restart")
    t = rng.uniform(8, 25)
    while t + 12 < end:
        down = round(rng.uniform(2, 10), 2)
        nemesis.append({"kind": "pg_restart", "at": round(t, 2), "down": down})
        t += down + rng.uniform(15, 45)

    rng = stream("pause")
    t = rng.uniform(5, 20)
    while t + 8 < end:
        length = round(min(rng.uniform(5, 30), end - 3 - t), 2)
        writer = rng.choice(WRITERS)
        nemesis.append({"kind": "pause", "at": round(t, 2), "writer": writer, "seconds": length})
        t += length + rng.uniform(5, 25)

    rng = stream("kill_job")
    t = rng.uniform(5, 0.3 * end)
    while t + 10 < end:
        nemesis.append(
            {"kind": "kill_job", "at": round(t, 2), "delay": round(rng.uniform(1, 4), 2)}
        )
        t += rng.uniform(15, 40)

    rng = stream("clock_step")
    t = rng.uniform(5, 25)
    while clock_steps and t + 8 < end:
        length = round(min(rng.uniform(5, 30), end - 3 - t), 2)
        step = {"writer": rng.choice(WRITERS), "offset": rng.choice(CLOCK_OFFSETS)}
        nemesis.append({"kind": "clock_step", "at": round(t, 2), **step, "seconds": length})
        t += length + rng.uniform(5, 30)

    nemesis.sort(key=lambda e: e["at"])
    rng = stream("admin")
    admin = [
        {
            "pause": round(rng.uniform(1, 5), 2),
            "reencrypt": "job" if rng.random() < 0.7 else "library",
            "rewrap": rng.random() < 0.3,
        }
        for _ in range(int(end / 4) + 2)
    ]
    return {"seed": seed, "seconds": seconds, "nemesis": nemesis, "admin": admin}


# -- the nemesis -----------------------------------------------------------------------------


class Nemesis:
    """Runs the schedule's faults, one thread per kind, and heals everything when told to."""

    def __init__(
        self,
        schedule: dict[str, Any],
        cluster: PgCluster,
        writers: dict[str, subprocess.Popen[bytes]],
        clock_files: dict[str, Path],
        out: Path,
    ) -> None:
        self.schedule = schedule
        self.cluster = cluster
        self.writers = writers
        self.clock_files = clock_files
        self.out = out
        self.log = JsonLog(out / "nemesis.jsonl")
        self.log_lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.t0 = 0.0

    def record(self, **entry: Any) -> None:
        with self.log_lock:
            self.log.write(t=wall(), **entry)

    def wait_until(self, at: float) -> bool:
        """Sleeps until ``at`` seconds into the phase; False if the phase ended first."""
        return not self.stop.wait(max(0.0, self.t0 + at - wall()))

    def hold(self, seconds: float) -> None:
        """Keeps a fault in place for ``seconds``, or until the phase ends."""
        self.stop.wait(seconds)

    def start(self) -> list[threading.Thread]:
        self.t0 = wall()
        (self.out / "t0").write_text(repr(self.t0))
        threads = []
        for kind, run in self._runners().items():
            events = [e for e in self.schedule["nemesis"] if e["kind"] == kind]
            thread = threading.Thread(target=self._timeline, args=(run, events), name=kind)
            thread.start()
            threads.append(thread)
        return threads

    def _runners(self) -> dict[str, Callable[[dict[str, Any]], None]]:
        return {
            "pg_restart": self.pg_restart,
            "pause": self.pause,
            "kill_job": self.kill_job,
            "clock_step": self.clock_step,
        }

    def _timeline(
        self, run: Callable[[dict[str, Any]], None], events: list[dict[str, Any]]
    ) -> None:
        for event in events:
            if not self.wait_until(event["at"]):
                return
            try:
                run(event)
            except Exception as exc:  # a broken fault is a broken campaign: report it
                self.errors.append(f"{event}: {type(exc).__name__}: {exc}")
                self.record(kind=event["kind"], phase="error", err=f"{type(exc).__name__}: {exc}")

    def pg_restart(self, event: dict[str, Any]) -> None:
        self.record(kind="pg_restart", phase="start", down=event["down"])
        self.cluster.stop()
        try:
            self.hold(event["down"])
        finally:
            self.cluster.start()
        self.record(kind="pg_restart", phase="end")

    def pause(self, event: dict[str, Any]) -> None:
        proc = self.writers[event["writer"]]
        if proc.poll() is not None:
            self.record(kind="pause", phase="skipped", writer=event["writer"], why="exited")
            return
        proc.send_signal(signal.SIGSTOP)
        self.record(kind="pause", phase="start", writer=event["writer"], pid=proc.pid)
        try:
            self.hold(event["seconds"])
        finally:
            proc.send_signal(signal.SIGCONT)
        self.record(kind="pause", phase="end", writer=event["writer"])

    def clock_step(self, event: dict[str, Any]) -> None:
        path = self.clock_files[event["writer"]]
        _write_clock(path, event["offset"])
        self.record(
            kind="clock_step", phase="start", writer=event["writer"], offset=event["offset"]
        )
        try:
            self.hold(event["seconds"])
        finally:
            _write_clock(path, "+0")
        self.record(kind="clock_step", phase="end", writer=event["writer"])

    def kill_job(self, event: dict[str, Any]) -> None:
        """SIGKILLs the next ``db reencrypt`` job ``delay`` s after it started.

        A job that finished before the delay is a miss; the next job is tried, with half the
        delay, until the phase ends.
        """
        delay = event["delay"]
        tried: set[int] = set()
        announce = self.out / "job.json"
        while not self.stop.is_set():
            try:
                job = json.loads(announce.read_text())
            except (OSError, json.JSONDecodeError):
                self.stop.wait(0.02)
                continue
            if job["n"] in tried:
                self.stop.wait(0.02)
                continue
            tried.add(job["n"])
            try:
                fd = os.pidfd_open(job["pid"])
            except ProcessLookupError:
                continue
            try:
                # The admin withdraws job.json before it reaps the job: if the announcement
                # still names this job now, the pidfd opened above is that job's.
                try:
                    still = json.loads(announce.read_text())["n"] == job["n"]
                except (OSError, json.JSONDecodeError):
                    still = False
                if not still:
                    continue
                self.stop.wait(max(0.0, job["started"] + delay - wall()))
                if self.stop.is_set():
                    return
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except ProcessLookupError:
                    self.record(kind="kill_job", phase="missed", job=job["n"], delay=delay)
                    delay /= 2
                    continue
                self.record(
                    kind="kill_job",
                    phase="sent",
                    job=job["n"],
                    pid=job["pid"],
                    after=round(wall() - job["started"], 2),
                )
                return
            finally:
                os.close(fd)


def _write_clock(path: Path, offset: str) -> None:
    # Rename over the old file: libfaketime rereads it on every call and must never see it
    # half written.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(offset + "\n")
    tmp.replace(path)


# -- the run ---------------------------------------------------------------------------------


def writer_pause(seconds: float) -> float:
    """Each writer's pause between operations: about TABLE_ROWS rows by the end, at most."""
    return round(max(0.02, 3 * seconds / TABLE_ROWS), 3)


def _env(cluster: PgCluster, out: Path, seconds: float) -> dict[str, str]:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("GLC_") and not k.startswith("GLC_CAMPAIGN")]:
        if key != "GLC_COVERAGE_DIR":
            del env[key]  # the campaign's processes use the private cluster and nothing else
    env.update(
        {
            "GLC_DATA_DIR": str(out / "data"),
            "GLC_KEY_STORE_URL": cluster.url,
            "GLC_KEYRING_REFRESH_SECONDS": str(REFRESH),
            "GLC_CAMPAIGN_DB": cluster.url,
            "GLC_CAMPAIGN_WRITER_PAUSE": str(writer_pause(seconds)),
            # A PYTHONPATH given to the campaign comes first: it may name another build of the
            # library to run the campaign against.
            "PYTHONPATH": os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p),
        }
    )
    return env


def _spawn_writer(
    name: str, env: dict[str, str], out: Path, faketime: str | None, clock: Path
) -> subprocess.Popen[bytes]:
    env = dict(env)
    if faketime is not None:
        _write_clock(clock, "+0")
        env.update(
            {
                "LD_PRELOAD": faketime,
                "FAKETIME_TIMESTAMP_FILE": str(clock),
                "FAKETIME_NO_CACHE": "1",
                # Only the wall clock steps: monotonic time is what the checker relates the
                # writer's calls to the database clock with, and it never steps on a real host.
                "DONT_FAKE_MONOTONIC": "1",
                "GLC_CAMPAIGN_FAKETIME": "1",
            }
        )
    with (out / f"writer-{name}.stderr").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.campaign.writer", name, str(out)],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _acked_inserts(out: Path, name: str) -> int:
    return sum(
        1 for r in read_jsonl(out / f"writer-{name}.jsonl") if r["op"] == "insert" and r["ok"]
    )


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
        return None


def run(seed: int, seconds: float, out: Path) -> dict[str, Any]:
    """Runs one campaign into ``out``; returns the report (also written to report.json)."""
    out.mkdir(parents=True, exist_ok=True)
    faketime = faketime_library()
    notes = []
    if faketime is None:
        notes.append("libfaketime is not installed: the clock-step fault is skipped")
        print("campaign: NOTE " + notes[-1], flush=True)
    schedule = make_schedule(seed, seconds, clock_steps=faketime is not None)
    (out / "schedule.json").write_text(json.dumps(schedule, indent=1))
    started = time.monotonic()
    with private_cluster() as cluster:
        cluster.psql(CREATE_TABLE)
        env = _env(cluster, out, seconds)
        init = subprocess.run(
            [sys.executable, "-m", "greenlang_crypto", "init"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if init.returncode != 0:
            raise RuntimeError(f"init failed: {init.stderr}")
        clocks = {n: out / f"clock-{n}" for n in WRITERS}
        writers: dict[str, subprocess.Popen[bytes]] = {}
        admin: subprocess.Popen[bytes] | None = None
        nemesis = Nemesis(schedule, cluster, writers, clocks, out)
        threads: list[threading.Thread] = []
        exits: dict[str, int | None] = {}
        recovery: dict[str, float | None] = {}
        faults_done = False
        try:
            for name in WRITERS:
                writers[name] = _spawn_writer(name, env, out, faketime, clocks[name])
            deadline = time.monotonic() + 60
            while not all(_acked_inserts(out, n) >= 10 for n in WRITERS):
                dead = [n for n, p in writers.items() if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    errs = {n: (out / f"writer-{n}.stderr").read_text()[-2000:] for n in WRITERS}
                    raise RuntimeError(f"writers did not start: {errs}")
                time.sleep(0.1)
            with (out / "admin.stderr").open("wb") as err:
                admin = subprocess.Popen(
                    [sys.executable, "-m", "tests.campaign.admin", str(out)],
                    env=env,
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            threads = nemesis.start()
            print(f"campaign: fault phase of {seconds:g} s under way", flush=True)
            nemesis.stop.wait(seconds)
            faults_done = True
        finally:
            # Heal: every fault ends (writers continue, clocks return, PostgreSQL is up).
            nemesis.stop.set()
            for thread in threads:
                thread.join(120)
            for proc in writers.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
            for path in clocks.values():
                if path.exists():
                    _write_clock(path, "+0")
            if not _pg_up(cluster):
                cluster.start()
            if faults_done:
                recovery = await_recovery(out, wall(), RECOVERY_SECONDS)
            (out / "stop-admin").touch()
            if admin is not None:
                exits["admin"] = _stop(admin, 240)
            (out / "stop").touch()
            for name, proc in writers.items():
                exits[f"writer-{name}"] = _stop(proc, 60)
        check = subprocess.run(
            [sys.executable, "-m", "tests.campaign.checker", str(out)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(f"checker failed: {check.stderr[-3000:]}")
    report = build_report(schedule, out, nemesis.t0, exits, nemesis.errors, notes, recovery)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def await_recovery(out: Path, healed_at: float, timeout: float) -> dict[str, float | None]:
    """Seconds until each writer committed a value again after the faults ended (None: never).

    Without this, writers that stopped writing at the first fault would leave every later
    check vacuously true.
    """
    offsets = dict.fromkeys(WRITERS, 0)
    found: dict[str, float | None] = dict.fromkeys(WRITERS)
    deadline = time.monotonic() + timeout
    while True:
        for name in WRITERS:
            if found[name] is not None:
                continue
            path = out / f"writer-{name}.jsonl"
            with path.open("rb") as f:
                f.seek(offsets[name])
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            offsets[name] += len(complete)
            for line in complete.splitlines():
                r = json.loads(line)
                if r["op"] == "insert" and r["ok"] and r["db"] >= healed_at:
                    found[name] = round(r["db"] - healed_at, 2)
                    break
        if all(v is not None for v in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _pg_up(cluster: PgCluster) -> bool:
    try:
        cluster.psql("SELECT 1")
    except subprocess.SubprocessError:
        return False
    return True


# -- the report ------------------------------------------------------------------------------


def injected(out: Path) -> dict[str, int]:
    """How many faults of each kind actually happened (not merely were scheduled)."""
    nemesis = read_jsonl(out / "nemesis.jsonl")
    admin = read_jsonl(out / "admin.jsonl")
    counts = Counter(e["kind"] for e in nemesis if e.get("phase") == "start")
    # A kill counts when the admin saw its job die of SIGKILL, not when the signal was sent.
    counts["kill_job"] = sum(1 for e in admin if e["step"] == "job" and e["rc"] == -signal.SIGKILL)
    return {k: counts.get(k, 0) for k in FAULT_KINDS}


def timeline(out: Path, t0: float) -> list[str]:
    """Every nemesis and admin event, in order, at seconds since the fault phase began."""
    lines = []
    for e in read_jsonl(out / "nemesis.jsonl"):
        rest = {k: v for k, v in e.items() if k not in ("t", "kind", "phase")}
        lines.append((e["t"], f"nemesis {e['kind']} {e['phase']} {_fmt(rest)}"))
    for e in read_jsonl(out / "admin.jsonl"):
        rest = {k: v for k, v in e.items() if k not in ("t0", "t1", "step", "summary")}
        if e.get("summary"):
            rest["remaining"] = e["summary"].get("remaining")
            rest["quarantined"] = e["summary"].get("quarantined")
        ok = "" if e.get("ok", True) else " FAILED"
        lines.append((e["t1"], f"admin   {e['step']}{ok} {_fmt(rest)}"))
    lines.sort(key=lambda x: x[0])
    return [f"{t - t0:8.2f}s  {text}" for t, text in lines]


def _fmt(d: dict[str, Any]) -> str:
    # One line per event: error messages of the database driver span several lines.
    return " ".join(f"{k}={' '.join(str(v).split())}" for k, v in d.items() if v is not None)


def build_report(
    schedule: dict[str, Any],
    out: Path,
    t0: float,
    exits: dict[str, int | None],
    nemesis_errors: list[str],
    notes: list[str],
    recovery: dict[str, float | None],
) -> dict[str, Any]:
    """Verdicts: ``problems`` fail the campaign, ``warnings`` are findings to read."""
    check = json.loads((out / "check.json").read_text())
    counts = injected(out)
    kinds = [k for k in FAULT_KINDS if k != "clock_step" or faketime_library() is not None]
    missing = [k for k in kinds if counts[k] == 0]
    problems = []
    if check["lost"]:
        problems.append(f"{len(check['lost'])} acknowledged value(s) lost {check['lost_by_cause']}")
    if check["sealed_after_retirement"]:
        problems.append(
            f"{len(check['sealed_after_retirement'])} value(s) sealed under a version after its "
            "retirement was acknowledged"
        )
    if missing:
        problems.append("fault kinds never injected: " + ", ".join(missing))
    if nemesis_errors:
        problems.append("nemesis errors: " + "; ".join(nemesis_errors))
    stuck = sorted(w for w, v in recovery.items() if v is None)
    if stuck:
        problems.append(
            f"writers that committed nothing within {RECOVERY_SECONDS:g} s after every fault "
            f"healed: {', '.join(stuck)} (last refusals: {check['last_refusal']})"
        )
    warnings = []
    if check["stale_seals"]:
        warnings.append(
            f"{len(check['stale_seals'])} stale seal(s): a version sealed after every live "
            "instance was reported on its successor"
        )
    if check["held_envelopes"]:
        warnings.append(f"{len(check['held_envelopes'])} held envelope(s) undecryptable")
    if check["retired_decryptable"]:
        warnings.append(
            f"{len(check['retired_decryptable'])} value(s) of retired versions still decrypt"
        )
    if check["admin"]["reencrypts_given_up"]:
        warnings.append(
            f"{check['admin']['reencrypts_given_up']} re-encryption(s) never succeeded "
            f"within {STEP_DEADLINE:g} s (their retirement was skipped)"
        )
    crashed = {k: v for k, v in exits.items() if v != 0}
    if crashed:
        warnings.append(f"processes that did not exit with 0 (see their .stderr): {crashed}")
    prefix = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    return {
        "seed": schedule["seed"],
        "seconds": schedule["seconds"],
        "replay": (
            f"{prefix}GLC_CAMPAIGN_SEED={schedule['seed']} "
            f"GLC_CAMPAIGN_SECONDS={schedule['seconds']:g} "
            ".venv/bin/python -m tests.campaign.campaign"
        ),
        "ok": not problems,
        "problems": problems,
        "warnings": warnings,
        "notes": notes,
        "injected": counts,
        "recovery_seconds": recovery,
        "check": check,
        "schedule": schedule,
        "timeline": timeline(out, t0),
        "out": str(out),
    }


def _groups(items: list[dict[str, Any]]) -> list[str]:
    """Violations by writer and key version: how many, and when (seconds into the phase)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault((item["writer"], item["version"]), []).append(item)
    return [
        f"writer {w} v{v}: {len(g)} between {min(i['began_at'] for i in g):.2f}s and "
        f"{max(i['began_at'] for i in g):.2f}s"
        for (w, v), g in sorted(groups.items())
    ]


def _versions(c: dict[str, Any]) -> str:
    sealed = c["versions_sealed"]
    shown = sealed if len(sealed) <= 8 else f"{len(sealed)} versions, v{min(map(int, sealed))}.."
    return f"values per version sealed {shown}, final minimum version {c['final_min_version']}"


def render(report: dict[str, Any]) -> str:
    """The report as text: a summary always; the schedule and timeline on failure."""
    c = report["check"]
    lines = [
        f"campaign seed={report['seed']} seconds={report['seconds']:g}: "
        + ("OK" if report["ok"] else "FAILED"),
        f"  replay: {report['replay']}",
        "  faults injected: " + _fmt(report["injected"]),
        "  seconds until each writer committed again after the faults healed: "
        + _fmt({w: "never" if v is None else v for w, v in report["recovery_seconds"].items()}),
        *(f"  note: {n}" for n in report["notes"]),
        f"  writers: {c['encrypts_acked']} acknowledged encrypts, {c['encrypts_refused']} "
        f"refused {c['refusals']}, {c['rows']} rows in the table, {_versions(c)}",
        f"  per writer: {json.dumps(c['by_writer'])}",
        f"  admin: {_fmt(c['admin'])}",
        f"  checker: lost={len(c['lost'])} sealed_after_retirement="
        f"{len(c['sealed_after_retirement'])} stale_seals={len(c['stale_seals'])} "
        f"held_envelopes={len(c['held_envelopes'])} retired_as_planned="
        f"{c['retired_as_planned']} decrypted={c['decrypted']}",
    ]
    for name, items in (
        ("LOST", c["lost"]),
        ("SEALED AFTER RETIREMENT", c["sealed_after_retirement"]),
        (
            "stale seals (sealed under a version after the fleet reported its successor)",
            c["stale_seals"],
        ),
        (
            "held envelopes (sealed before the rotation converged, inserted after the final "
            "re-encryption began: lost by the application's delay, not the library)",
            c["held_envelopes"],
        ),
        ("retired versions that still decrypt", c["retired_decryptable"]),
    ):
        if items:
            lines.append(f"  {name}: {len(items)}")
            lines.extend(f"    {g}" for g in _groups(items))
            lines.append("    first ones:")
            lines.extend(f"    {json.dumps(i)}" for i in items[:4])
    lines.extend(f"  warning: {w}" for w in report["warnings"])
    if not report["ok"]:
        lines.append("  PROBLEMS: " + "; ".join(report["problems"]))
        lines.append(f"  schedule (seed {report['seed']}):")
        lines.extend(f"    {json.dumps(e)}" for e in report["schedule"]["nemesis"])
        lines.extend(
            f"    admin cycle {i}: {json.dumps(e)}"
            for i, e in enumerate(report["schedule"]["admin"])
        )
        lines.append("  timeline (seconds since the fault phase began):")
        lines.extend(f"    {line}" for line in report["timeline"])
        lines.append(f"  files: {report['out']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    seed_text = os.environ.get("GLC_CAMPAIGN_SEED")
    seed = int(seed_text) if seed_text else secrets.randbelow(2**32)
    seconds = float(os.environ.get("GLC_CAMPAIGN_SECONDS") or 120)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="glc-campaign-"))

    def terminated(signum: int, _frame: Any) -> None:
        # Unwind, so that the writers, the admin and the private cluster are stopped.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    # First thing, so that even a campaign that crashes can be replayed.
    print(f"campaign: seed={seed} seconds={seconds:g} out={out}", flush=True)
    report = run(seed, seconds, out)
    print(render(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
