"""The processes of the tenant-erasure tests: a writer, an index writer and an admin.

Run as ``python erasure_proc.py writer OUT_DIR``, ``... index OUT_DIR`` or ``... admin OUT_DIR
NAME``. Every process builds its service from ``GLC_*`` environment variables, as a deployed
instance would. The writer encrypts for tenant ``acme`` without pause (alternately through
``encrypt`` and through a ``value_encryptor``, the Rust fast path) and logs every attempt as one
JSON line written after the call returned, with wall-clock start and end times; it stops when
``OUT_DIR/stop`` exists.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from greenlang_crypto import EncryptionContext
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import GreenlangCryptoError
from greenlang_crypto.service import EncryptionService

TENANT = "acme"
CTX = EncryptionContext(tenant_id=TENANT, data_class="pii")
#: The blind-index purposes the index writer and the tests use.
PURPOSE = "users.email|tenant="


def _service() -> EncryptionService:
    return EncryptionService(EncryptionServiceConfig.from_env())


def read_log(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a log (a killed writer may leave half a line)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def writer(out_dir: Path) -> None:
    svc = _service()
    seal = svc.value_encryptor(CTX)
    stop = out_dir / "stop"
    seq = 0
    with (out_dir / "writer.jsonl").open("a") as log:
        while not stop.exists():
            plaintext = f"w-{seq}".encode()
            started = time.time()
            record: dict[str, Any] = {"seq": seq, "t0": started}
            try:
                envelope = svc.encrypt(plaintext, CTX) if seq % 2 else seal(plaintext)
                record.update(ok=True, env=envelope.hex())
            except GreenlangCryptoError as exc:
                record.update(ok=False, err=type(exc).__name__)
            record["t1"] = time.time()
            log.write(json.dumps(record) + "\n")
            log.flush()
            seq += 1
            time.sleep(0.002)
    svc.close()


def index(out_dir: Path) -> None:
    """Computes the index value of one address for two tenants, then stays live until stop."""
    svc = _service()
    values = {
        tenant: svc.blind_index_key(PURPOSE + tenant).compute(b"a@example.com").hex()
        for tenant in (TENANT, "globex")
    }
    (out_dir / "index.json").write_text(json.dumps(values))
    stop = out_dir / "stop"
    while not stop.exists():
        time.sleep(0.02)
    svc.close()


class _PhaseClock:
    """Notes when each erasure phase was reported (a real observer of the service)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        if event == "tenant_erased":
            self.phases[str(fields["phase"])] = time.time()


def admin(out_dir: Path, name: str) -> None:
    """Waits for OUT_DIR/go, erases the tenant and writes its report as NAME.json."""
    clock = _PhaseClock()
    svc = EncryptionService(EncryptionServiceConfig.from_env(), observers=[clock])
    go = out_dir / "go"
    while not go.exists():
        time.sleep(0.005)
    called = time.time()
    report = svc.erase_tenant(TENANT)
    result = {
        "called": called,
        "returned": time.time(),
        "phases": clock.phases,
        "began": report.began,
        "completed": report.completed,
        "stored_deks": report.stored_deks_destroyed,
        "branch_keys": report.branch_keys_destroyed,
        "instances": report.instances_acknowledged,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(result))
    svc.close()


if __name__ == "__main__":
    command, out = sys.argv[1], Path(sys.argv[2])
    if command == "writer":
        writer(out)
    elif command == "index":
        index(out)
    elif command == "admin":
        admin(out, sys.argv[3])
    else:
        raise SystemExit(f"unknown command {command}")
