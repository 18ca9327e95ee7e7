"""The processes of the fault tests: writers, a tight encrypt loop, re-encryption, a verifier,
a seeder and a many-threaded reader.

Run as ``python fault_proc.py MODE [ARGS...] OUT_DIR``:

- ``writer NAME``: seals values in a loop and decrypts older ones (the PostgreSQL restart test);
- ``tight NAME``: seals without pause (the paused-instance test);
- ``reencrypt NEW_VERSION``: re-encrypts every logged envelope below ``NEW_VERSION``;
- ``verify``: decrypts every logged envelope (or its re-encrypted copy) in a fresh process;
- ``seed COUNT``: seals ``COUNT`` values under distinct contexts with stored DEKs;
- ``threads``: decrypts the seeded values from that many threads at once, then seals in a loop.

Every process builds its service from ``GLC_*`` variables, as a deployed instance does. Each
operation is logged as one JSON line after it returned, so a logged envelope was acknowledged
to its caller (and its stored DEK committed). Every failure is logged with its class name and
whether it is one of the library's typed errors: a raw driver exception escaping the library
is a defect the tests look for, so the loops catch ``Exception``, not the library's base class.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import GreenlangCryptoError
from greenlang_crypto.service import EncryptionService

DATA_CLASS = "pii"
#: Every this many writes a writer uses a context of its own, so that sealing needs a new
#: stored DEK (a key-store write) instead of a cached one.
FRESH_CONTEXT_EVERY = 25


def _service() -> EncryptionService:
    return EncryptionService(EncryptionServiceConfig.from_env())


def ctx_of(tenant: str) -> EncryptionContext:
    """The context every value of ``tenant`` is sealed under."""
    return EncryptionContext(tenant_id=tenant, data_class=DATA_CLASS)


def read_log(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a log (a killed writer may leave half a line)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _write(log: IO[str], record: dict[str, Any]) -> None:
    log.write(json.dumps(record) + "\n")


def _failure(exc: Exception) -> dict[str, Any]:
    return {"err": type(exc).__name__, "typed": isinstance(exc, GreenlangCryptoError)}


def _seal(svc: EncryptionService, name: str, seq: int, tenant: str, ref: str) -> dict[str, Any]:
    """Seals one value; returns its log record (``enc`` or ``enc_err``)."""
    plaintext = f"{name}-{seq}"
    started = time.time()
    try:
        envelope = svc.encrypt(plaintext.encode(), ctx_of(tenant), key_reference=ref)
    except Exception as exc:
        return {"op": "enc_err", "seq": seq, "t": started, "t_end": time.time(), **_failure(exc)}
    return {
        "op": "enc",
        "worker": name,
        "seq": seq,
        "t": started,
        "t_end": time.time(),
        "v": parse_envelope(envelope).key_version,
        "ref": ref,
        "tenant": tenant,
        "env": envelope.hex(),
        "pt": plaintext,
    }


def _close(svc: EncryptionService, log: IO[str]) -> None:
    """Closes the service; logs a failure instead of dying on it, so the test sees it."""
    started = time.time()
    try:
        svc.close()
    except Exception as exc:
        _write(log, {"op": "close_err", "t": started, "t_end": time.time(), **_failure(exc)})


def writer(name: str, out_dir: Path) -> None:
    """One encryption and one decryption of an older value per round, until told to stop."""
    svc = _service()
    stop = out_dir / "stop"
    rng = random.Random(name)
    written: list[dict[str, Any]] = []
    seq = 0
    with (out_dir / f"log-{name}.jsonl").open("a") as log:
        while not stop.exists():
            tenant = f"{name}-{seq}" if seq % FRESH_CONTEXT_EVERY == 0 else name
            record = _seal(svc, name, seq, tenant, "inline" if seq % 3 == 0 else "stored")
            _write(log, record)
            if record["op"] == "enc":
                written.append(record)
            else:
                # Do not spin on an outage: a failed call may have returned at once.
                time.sleep(0.05)
            seq += 1
            if written:
                old = rng.choice(written)
                started = time.time()
                try:
                    plain = svc.decrypt(bytes.fromhex(old["env"]), ctx_of(old["tenant"]))
                    result: dict[str, Any] = {"ok": plain.decode() == old["pt"], "err": None}
                except Exception as exc:
                    result = {"ok": False, **_failure(exc)}
                _write(
                    log,
                    {"op": "dec", "t": started, "t_end": time.time(), "v": old["v"], **result},
                )
            log.flush()
            time.sleep(0.01)
        _close(svc, log)


def tight(name: str, out_dir: Path) -> None:
    """Seals without pause (stored and inline DEKs alternating) until told to stop."""
    svc = _service()
    stop = out_dir / "stop"
    seq = 0
    with (out_dir / f"log-{name}.jsonl").open("a") as log:
        while not stop.exists():
            _write(log, _seal(svc, name, seq, name, "stored" if seq % 2 else "inline"))
            seq += 1
            if seq % 20 == 0:
                log.flush()
        _close(svc, log)


def logged_envelopes(out_dir: Path) -> list[dict[str, Any]]:
    """Every acknowledged envelope of every worker, in log order."""
    return [r for p in sorted(out_dir.glob("log-*.jsonl")) for r in read_log(p) if r["op"] == "enc"]


def reencrypt(new_version: int, out_dir: Path) -> None:
    """Re-encrypts each logged envelope below ``new_version`` (what a migration job does)."""
    svc = _service()
    moved = 0
    with (out_dir / "reencrypted.jsonl").open("w") as log:
        for record in logged_envelopes(out_dir):
            if record["v"] < new_version:
                new = svc.reencrypt(bytes.fromhex(record["env"]), ctx_of(record["tenant"]))
                _write(log, {**record, "env": new.hex(), "v": parse_envelope(new).key_version})
                moved += 1
    svc.close()
    (out_dir / "reencrypt.json").write_text(json.dumps({"moved": moved, "t": time.time()}))


def verify(out_dir: Path) -> None:
    """Decrypts every logged envelope, or its re-encrypted copy, in a fresh process."""
    svc = _service()
    copies = {}
    if (out_dir / "reencrypted.jsonl").exists():
        copies = {(r["worker"], r["seq"]): r for r in read_log(out_dir / "reencrypted.jsonl")}
    results = []
    for record in logged_envelopes(out_dir):
        attempts = [("direct", record)]
        copy = copies.get((record["worker"], record["seq"]))
        if copy is not None:
            attempts.append(("reencrypted", copy))
        outcome: dict[str, Any] = {}
        for via, candidate in attempts:
            try:
                plain = svc.decrypt(bytes.fromhex(candidate["env"]), ctx_of(candidate["tenant"]))
                outcome = {"ok": plain.decode() == candidate["pt"], "via": via, "err": None}
            except Exception as exc:
                outcome = {"ok": False, "via": via, **_failure(exc)}
            if outcome["ok"]:
                break
        results.append(
            {
                "worker": record["worker"],
                "seq": record["seq"],
                "v": record["v"],
                "t": record["t"],
                "t_end": record["t_end"],
                **outcome,
            }
        )
    svc.close()
    (out_dir / "verify.json").write_text(json.dumps(results))


def seed(count: int, out_dir: Path) -> None:
    """Seals one value per context under ``count`` distinct contexts, with stored DEKs."""
    svc = _service()
    values = []
    for i in range(count):
        tenant = f"seed-{i}"
        plaintext = f"value-{i}"
        envelope = svc.encrypt(plaintext.encode(), ctx_of(tenant), key_reference="stored")
        values.append({"tenant": tenant, "env": envelope.hex(), "pt": plaintext})
    svc.close()
    (out_dir / "values.json").write_text(json.dumps(values))


def threads(out_dir: Path) -> None:
    """Decrypts every seeded value from a thread of its own, all released at once.

    A fresh process caches nothing, so each thread has to read its stored DEK from the key
    store at the same moment as the others. Afterwards the process seals a value every 20 ms
    and logs the key version, so the test sees when a rotation made elsewhere reaches it.
    """
    values = json.loads((out_dir / "values.json").read_text())
    svc = _service()
    barrier = threading.Barrier(len(values))
    errors: list[str] = []
    wrong: list[int] = []
    lock = threading.Lock()

    def read(i: int) -> None:
        value = values[i]
        barrier.wait()
        try:
            plain = svc.decrypt(bytes.fromhex(value["env"]), ctx_of(value["tenant"]))
            if plain.decode() != value["pt"]:
                with lock:
                    wrong.append(i)
        except Exception as exc:
            with lock:
                errors.append(type(exc).__name__)

    workers = [threading.Thread(target=read, args=(i,)) for i in range(len(values))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    (out_dir / "threads.json").write_text(
        json.dumps({"decrypted": len(values) - len(errors) - len(wrong), "errors": errors,
                    "wrong": wrong})
    )  # fmt: skip
    stop = out_dir / "stop"
    seq = 0
    with (out_dir / "log-threads.jsonl").open("a") as log:
        while not stop.exists():
            _write(log, _seal(svc, "threads", seq, "threads", "stored"))
            log.flush()
            seq += 1
            time.sleep(0.02)
        _close(svc, log)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    out = Path(rest[-1])
    if mode == "writer":
        writer(rest[0], out)
    elif mode == "tight":
        tight(rest[0], out)
    elif mode == "reencrypt":
        reencrypt(int(rest[0]), out)
    elif mode == "verify":
        verify(out)
    elif mode == "seed":
        seed(int(rest[0]), out)
    elif mode == "threads":
        threads(out)
    else:
        raise SystemExit(f"unknown mode {mode}")
