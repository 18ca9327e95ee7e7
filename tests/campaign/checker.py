"""The campaign's checker: the table and the histories against what was acknowledged.

Run as ``python -m tests.campaign.checker OUT_DIR`` (a fresh process, after every actor
stopped and every fault healed) with the ``GLC_*`` variables of the campaign. Writes
``OUT_DIR/check.json``.

Times. Every bound is on the database host's clock. The admin's times are its own wall clock
(never faked; PostgreSQL runs on the same host). A writer's wall clock may have been stepped,
so its calls are placed through its monotonic clock and the last ``clock_timestamp()`` it
read (see ``writer.py``): a call began no earlier than ``start_lo``. A step acknowledged at
``t1`` committed before ``t1``. So ``start_lo > t1`` proves the call began after the
acknowledgement; the checks below only report what is proved, never what merely overlaps.

Verdicts:

* **lost**: a row whose envelope does not decrypt to its value, a history-only value of a
  version still in force that does not decrypt, or a committed insert whose row is gone. Each
  lost value carries its likely cause: ``sealed_after_retirement``, ``stale_seal`` (sealed
  under a version after the fleet reported its successor), or ``other``.
* **held envelopes** are listed apart, not as lost: a value sealed before its rotation
  converged whose insert began after that cycle's final re-encryption had started (a writer
  stopped between its encrypt and its insert). No library can re-encrypt an envelope that an
  application holds in memory; the fault is the insert's delay, so it is reported only.
* **sealed after retirement**: any acknowledged encrypt (stored or not) under a version whose
  retirement had been acknowledged before the call began.
* **stale seals**: acknowledged encrypts under a version older than one every live instance
  had been reported to use before the call began (the propagation bound), lost or not.
* ``retired_as_planned`` counts history-only values of retired versions that are refused;
  ``retired_decryptable`` lists those that still decrypt (a retirement must refuse them).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import Any

import psycopg

from greenlang_crypto import parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import GreenlangCryptoError
from greenlang_crypto.service import EncryptionService
from tests.campaign.common import AAD, COLUMN, TABLE, context, read_jsonl

#: How far back a fault may lie to be named as a violation's context.
CONTEXT_SECONDS = 40.0
#: Inserts within this many seconds before a call place it on the database clock.
ANCHOR_WINDOW = 10.0


class Admin:
    """The admin's acknowledged steps, as the checks need them."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.retires = [e for e in events if e["step"] == "retire"]
        self.acked_retires = [e for e in self.retires if e["ok"]]
        self.converged = [
            e for e in events if e["step"] == "converge" and e.get("reason") == "reported"
        ]
        self.reencrypts = [
            e for e in events if e["step"] in ("job", "library_reencrypt") and e["ok"]
        ]

    def retired_at(self, version: int) -> dict[str, Any] | None:
        """The first acknowledged retirement of ``version``."""
        found = [e for e in self.acked_retires if e["below"] > version]
        return min(found, key=lambda e: e["t1"]) if found else None

    def first_retire_attempt(self, version: int) -> dict[str, Any] | None:
        found = [e for e in self.retires if e["below"] > version]
        return min(found, key=lambda e: e["t0"]) if found else None

    def converged_past(self, version: int) -> dict[str, Any] | None:
        """The first report that every live instance used a version above ``version``."""
        found = [e for e in self.converged if e["new_version"] > version]
        return min(found, key=lambda e: e["t1"]) if found else None

    def final_reencrypt_start(self, cycle: int) -> float | None:
        found = [e["t0"] for e in self.reencrypts if e["cycle"] == cycle]
        return max(found) if found else None

    def summary(self) -> dict[str, int]:
        steps = Counter(e["step"] for e in self.events if e.get("ok", True))
        jobs = [e for e in self.events if e["step"] == "job"]
        return {
            "rotations": steps["rotate"] + steps["rotate_observed"],
            "converged_reported": len(self.converged),
            "converged_by_window": sum(
                1 for e in self.events if e["step"] == "converge" and e["reason"] == "window"
            ),
            "job_runs": len(jobs),
            "jobs_ok": sum(1 for e in jobs if e["ok"]),
            "jobs_killed": sum(1 for e in jobs if e["rc"] == -9),
            "jobs_failed": sum(1 for e in jobs if not e["ok"] and e["rc"] != -9),
            "library_reencrypts": steps["library_reencrypt"],
            "reencrypts_given_up": steps["reencrypt_gave_up"],
            "retirements": len(self.acked_retires),
            "retire_refusals": len(self.retires) - len(self.acked_retires),
            "rewraps": steps["rewrap"],
        }


def _faults(nemesis: list[dict[str, Any]], writer: str, at: float, t0: float) -> list[str]:
    """The faults that touched ``writer`` (or everyone) in the CONTEXT_SECONDS before ``at``."""
    out = []
    for e in nemesis:
        if e.get("writer") not in (None, writer) or not at - CONTEXT_SECONDS <= e["t"] <= at:
            continue
        detail = e.get("offset") or e.get("down") or e.get("job") or ""
        out.append(f"{e['t'] - t0:.2f}s {e['kind']} {e['phase']} {detail}".rstrip())
    return out


def place_on_db_clock(
    encrypts: dict[tuple[str, int], dict[str, Any]],
    inserts: dict[tuple[str, int], dict[str, Any]],
) -> None:
    """Sets ``start_lo`` (and ``offset_lo``) of every acknowledged encrypt.

    Each committed insert read ``db`` between the writer's monotonic instants ``m0`` and
    ``m1``, so ``db - m1`` is a lower bound of (database clock - monotonic clock) of that
    writer, and ``m0 + max(db_i - m1_i)`` a lower bound of a later instant ``m0``. One insert
    alone can be loose by as long as it was stalled (a SIGSTOP between its statement and its
    reply), so the best bound of the inserts of the ANCHOR_WINDOW before the call is used:
    the two clocks drift apart only by clock discipline, negligible within that window.
    """
    per_writer: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in inserts.values():
        if r["ok"]:
            per_writer[r["w"]].append((r["m1"], r["db"] - r["m1"]))
    ops_by_writer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for op in encrypts.values():
        ops_by_writer[op["w"]].append(op)
    for writer, ops in ops_by_writer.items():
        anchors = sorted(per_writer[writer])
        ops.sort(key=lambda o: o["m0"])
        window: deque[tuple[float, float]] = deque()  # offsets decreasing: the max is first
        i = 0
        for op in ops:
            while i < len(anchors) and anchors[i][0] <= op["m0"]:
                while window and window[-1][1] <= anchors[i][1]:
                    window.pop()
                window.append(anchors[i])
                i += 1
            while window and window[0][0] < op["m0"] - ANCHOR_WINDOW:
                window.popleft()
            db, _, ma = op["anchor"]  # the anchor the writer had (its first one: a SELECT)
            offset = db - ma
            if window:
                offset = max(offset, window[0][1])
            op["offset_lo"] = offset
            op["start_lo"] = op["m0"] + offset


def check(out: Path) -> dict[str, Any]:
    t0 = float((out / "t0").read_text()) if (out / "t0").exists() else 0.0
    admin = Admin(read_jsonl(out / "admin.jsonl"))
    nemesis = read_jsonl(out / "nemesis.jsonl")
    encrypts: dict[tuple[str, int], dict[str, Any]] = {}
    inserts: dict[tuple[str, int], dict[str, Any]] = {}
    refusals: Counter[str] = Counter()
    last_refusal: dict[str, str] = {}
    for path in sorted(out.glob("writer-*.jsonl")):
        for r in read_jsonl(path):
            key = (r["w"], r["seq"])
            if r["op"] == "encrypt":
                if r["ok"]:
                    encrypts[key] = r
                else:
                    refusals[r["err"]] += 1
                    last_refusal[r["w"]] = f"{r['err']} at {r['w0'] - t0:.1f}s (writer's clock)"
            else:
                inserts[key] = r
    place_on_db_clock(encrypts, inserts)

    def describe(op: dict[str, Any], **more: Any) -> dict[str, Any]:
        at = op["start_lo"]
        return {
            "writer": op["w"],
            "seq": op["seq"],
            "version": op["v"],
            "ref": op["ref"],
            "began_at": round(at - t0, 3),
            # How far this writer's own wall clock was off (a stepped clock shows here).
            "writer_clock_off": round(op["w0"] - at, 1),
            **more,
            "faults_before": _faults(nemesis, op["w"], at, t0),
        }

    sealed_after: list[dict[str, Any]] = []
    stale: list[dict[str, Any]] = []
    seal_verdict: dict[tuple[str, int], str] = {}
    for key, op in encrypts.items():
        retired = admin.retired_at(op["v"])
        if retired is not None and op["start_lo"] > retired["t1"]:
            seal_verdict[key] = "sealed_after_retirement"
            after = round(op["start_lo"] - retired["t1"], 3)
            sealed_after.append(describe(op, retired_at=round(retired["t1"] - t0, 3), after=after))
        converged = admin.converged_past(op["v"])
        if converged is not None and op["start_lo"] > converged["t1"]:
            seal_verdict.setdefault(key, "stale_seal")
            after = round(op["start_lo"] - converged["t1"], 3)
            stale.append(
                describe(
                    op,
                    successor=converged["new_version"],
                    converged_at=round(converged["t1"] - t0, 3),
                    after=after,
                )
            )

    svc = EncryptionService(EncryptionServiceConfig.from_env())
    min_version = svc.min_decryption_version
    ctx = context()
    with psycopg.connect(os.environ["GLC_CAMPAIGN_DB"], autocommit=True) as conn:
        rows = conn.execute(f"SELECT id, writer, seq, value, {COLUMN} FROM {TABLE}").fetchall()

    lost: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []

    def classify(
        key: tuple[str, int], op: dict[str, Any] | None, failure: str, *, stored: bool = True
    ) -> None:
        if op is None:
            lost.append({"writer": key[0], "seq": key[1], "failure": failure, "cause": "other"})
            return
        cause = seal_verdict.get(key)
        if cause is None and stored:
            ins = inserts.get(key)
            insert_lo = None
            if ins is not None:
                insert_lo = ins["db"] if ins["ok"] else ins["m0"] + op["offset_lo"]
            retired = admin.retired_at(op["v"]) or admin.first_retire_attempt(op["v"])
            final = admin.final_reencrypt_start(retired["cycle"]) if retired else None
            if insert_lo is not None and final is not None and insert_lo > final:
                held.append(
                    describe(
                        op,
                        failure=failure,
                        inserted_at=round(insert_lo - t0, 3),
                        final_reencrypt_at=round(final - t0, 3),
                    )
                )
                return
        lost.append(describe(op, failure=failure, cause=cause or "other"))

    decrypted = 0
    in_table = set()
    for _pk, writer, seq, value, envelope in rows:
        key = (writer, seq)
        in_table.add(key)
        try:
            ok = svc.decrypt(bytes(envelope), ctx, associated_data=AAD) == value.encode()
            failure = "" if ok else "wrong plaintext"
        except GreenlangCryptoError as exc:
            ok, failure = False, type(exc).__name__
        if ok:
            decrypted += 1
            continue
        failure += f" (stored envelope v{parse_envelope(bytes(envelope)).key_version})"
        classify(key, encrypts.get(key), failure)

    retired_as_planned = 0
    retired_decryptable: list[dict[str, Any]] = []
    for key, op in encrypts.items():
        if key in in_table:
            continue
        ins = inserts.get(key)
        if ins is not None and ins["ok"]:
            classify(key, op, "committed row is missing from the table")
            continue
        try:
            ok = svc.decrypt(bytes.fromhex(op["env"]), ctx, associated_data=AAD)
            failure = "" if ok == op["value"].encode() else "wrong plaintext"
        except GreenlangCryptoError as exc:
            failure = type(exc).__name__
        if op["v"] < min_version:
            if failure in ("KeyRetiredError", "KeyNotFoundError"):
                retired_as_planned += 1
            elif not failure:
                retired_decryptable.append(describe(op))
            else:
                classify(key, op, failure + " (history only, retired version)", stored=False)
        elif failure:
            classify(key, op, failure + " (history only)", stored=False)
        else:
            decrypted += 1
    svc.close()
    for items in (lost, held, sealed_after, stale, retired_decryptable):
        items.sort(key=lambda item: item.get("began_at", 0.0))  # the earliest tell the story
    by_cause = Counter(item["cause"] for item in lost)
    return {
        "encrypts_acked": len(encrypts),
        "encrypts_refused": sum(refusals.values()),
        "refusals": dict(refusals),
        "rows": len(rows),
        "decrypted": decrypted,
        "final_min_version": min_version,
        "versions_sealed": dict(sorted(Counter(op["v"] for op in encrypts.values()).items())),
        "admin": admin.summary(),
        "lost": lost,
        "lost_by_cause": dict(by_cause),
        "held_envelopes": held,
        "sealed_after_retirement": sealed_after,
        "stale_seals": stale,
        "retired_as_planned": retired_as_planned,
        "retired_decryptable": retired_decryptable,
        "by_writer": _per_writer(encrypts, refusals_by_writer(out), t0),
        "last_refusal": last_refusal,
    }


def refusals_by_writer(out: Path) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for path in out.glob("writer-*.jsonl"):
        for r in read_jsonl(path):
            if r["op"] == "encrypt" and not r["ok"]:
                counts[r["w"]] += 1
    return counts


def _per_writer(
    encrypts: dict[tuple[str, int], dict[str, Any]], refused: dict[str, int], t0: float
) -> dict[str, dict[str, Any]]:
    acked = Counter(w for w, _ in encrypts)
    last: dict[str, float] = {}
    for op in encrypts.values():
        last[op["w"]] = max(last.get(op["w"], float("-inf")), op["start_lo"])
    return {
        w: {
            "acked": acked[w],
            "refused": refused.get(w, 0),
            # An instance that stopped sealing for good shows here (seconds into the phase).
            "last_acked_at": round(last[w] - t0, 1),
        }
        for w in sorted(acked)
    }


if __name__ == "__main__":
    target = Path(sys.argv[1])
    (target / "check.json").write_text(json.dumps(check(target), indent=1))
