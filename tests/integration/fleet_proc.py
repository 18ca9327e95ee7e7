"""The processes of the fleet tests: workers, an admin and a verifier.

Run as ``python fleet_proc.py worker NAME OUT_DIR``, ``... admin REWRAP_TO OUT_DIR`` (``-``:
a new local master key) or ``... verify OUT_DIR``. Every process builds its service from
``GLC_*`` environment variables, as a deployed instance would. Workers log every operation
as one JSON line (written after the operation returned, so a logged envelope's stored DEK is
committed); the admin logs when each key change returned.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import GreenlangCryptoError, KeyStateError
from greenlang_crypto.service import EncryptionService

CTX = EncryptionContext(tenant_id="fleet", data_class="pii")


def _service() -> EncryptionService:
    return EncryptionService(EncryptionServiceConfig.from_env())


def read_log(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a log (a SIGKILLed writer may leave half a line)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def worker(name: str, out_dir: Path) -> None:
    svc = _service()
    stop = out_dir / "stop"
    written: list[tuple[int, bytes, int]] = []
    rng = random.Random(name)
    seq = 0
    with (out_dir / f"worker-{name}.jsonl").open("a") as log:
        while not stop.exists():
            plaintext = f"{name}-{seq}".encode()
            ref = "inline" if seq % 3 == 0 else "stored"
            started = time.time()
            try:
                envelope = svc.encrypt(plaintext, CTX, key_reference=ref)
            except GreenlangCryptoError as exc:
                log.write(json.dumps({"op": "enc_err", "t": started, "err": type(exc).__name__}))
                log.write("\n")
                log.flush()
                continue
            version = parse_envelope(envelope).key_version
            record = {"op": "enc", "t": started, "seq": seq, "v": version, "ref": ref}
            log.write(json.dumps({**record, "env": envelope.hex(), "pt": plaintext.decode()}))
            log.write("\n")
            written.append((seq, envelope, version))
            old_seq, old_env, old_version = rng.choice(written)
            started = time.time()
            try:
                ok = svc.decrypt(old_env, CTX) == f"{name}-{old_seq}".encode()
                err = None
            except GreenlangCryptoError as exc:
                ok, err = False, type(exc).__name__
            log.write(
                json.dumps({"op": "dec", "t": started, "v": old_version, "ok": ok, "err": err})
            )
            log.write("\n")
            log.flush()
            seq += 1
            time.sleep(0.005)
    svc.close()


def _worker_envelopes(out_dir: Path) -> list[dict[str, Any]]:
    return [
        {**r, "worker": p.name}
        for p in sorted(out_dir.glob("worker-*.jsonl"))
        for r in read_log(p)
        if r["op"] == "enc"
    ]


def admin(rewrap_to: str | None, out_dir: Path) -> None:
    """Rotates, re-encrypts what the old version wrote, retires it, then rewraps."""
    svc = _service()
    events: dict[str, Any] = {}
    result = svc.rotate()
    events["rotated"] = time.time()
    events["new_version"] = result.new_version
    (out_dir / "rotated").touch()
    # Wait until every live instance reports the new primary (the same check retire makes).
    refusals = 0
    deadline = time.monotonic() + 30
    while svc.retirement_blockers(result.new_version):
        if time.monotonic() > deadline:
            raise SystemExit("instances did not converge")
        time.sleep(0.05)
    events["converged"] = time.time()
    # Let a write that started just before its instance converged finish and be logged.
    time.sleep(0.3)
    moved = 0
    with (out_dir / "reencrypted.jsonl").open("w") as log:
        for record in _worker_envelopes(out_dir):
            if record["v"] < result.new_version:
                new = svc.reencrypt(bytes.fromhex(record["env"]), CTX)
                log.write(json.dumps({**record, "env": new.hex()}) + "\n")
                moved += 1
    events["reencrypted"] = moved
    while True:
        try:
            svc.retire_versions_below(result.new_version, delete_stored_deks=True)
            break
        except KeyStateError:
            refusals += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    events["retired"] = time.time()
    events["retire_refusals"] = refusals
    time.sleep(1.0)
    target = rewrap_to or svc.create_wrapping_key()
    events["rewrapped_deks"] = svc.rewrap(target)
    events["rewrapped"] = time.time()
    time.sleep(1.0)
    svc.close()
    (out_dir / "admin.json").write_text(json.dumps(events))


def verify(out_dir: Path) -> None:
    """A fresh process decrypts everything that was not deliberately retired."""
    svc = _service()
    admin_events = json.loads((out_dir / "admin.json").read_text())
    new_version = admin_events["new_version"]
    current = [r for r in _worker_envelopes(out_dir) if r["v"] >= new_version]
    moved = read_log(out_dir / "reencrypted.jsonl")
    lost = []
    for record in current + moved:
        try:
            if svc.decrypt(bytes.fromhex(record["env"]), CTX).decode() != record["pt"]:
                lost.append((record["worker"], record["seq"], "wrong plaintext"))
        except GreenlangCryptoError as exc:
            lost.append((record["worker"], record["seq"], type(exc).__name__))
    retired_refused = 0
    for record in _worker_envelopes(out_dir):
        if record["v"] < new_version:
            try:
                svc.decrypt(bytes.fromhex(record["env"]), CTX)
            except GreenlangCryptoError as exc:
                retired_refused += type(exc).__name__ == "KeyRetiredError"
    svc.close()
    summary = {
        "checked": len(current) + len(moved),
        "lost": lost,
        "retired_refused": retired_refused,
    }
    (out_dir / "verify.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "worker":
        worker(rest[0], Path(rest[1]))
    elif mode == "admin":
        admin(None if rest[0] == "-" else rest[0], Path(rest[1]))
    elif mode == "verify":
        verify(Path(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")
