"""Processes of the branch-key integration tests, each a fresh interpreter.

``python branch_proc.py decrypt IN_FILE OUT_FILE`` decrypts the envelopes listed in IN_FILE
(JSON lines ``{"tenant", "env", "pt"}``) and writes a JSON summary: the KMS requests botocore
actually sent (counted at the client, over HTTP), the number decrypted, the errors by type,
and the service's branch-key and Redis-cache counters.

``python branch_proc.py worker NAME OUT_DIR`` encrypts under one context until OUT_DIR/stop
exists, logging each envelope's branch id and time as one JSON line (fleet test).

Both build their service from ``GLC_*`` environment variables, as a deployed instance would.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import GreenlangCryptoError
from greenlang_crypto.service import EncryptionService


def _service() -> tuple[EncryptionService, list[str]]:
    config = EncryptionServiceConfig.from_env()
    sent: list[str] = []
    provider = None
    if config.provider == "aws-kms":
        from greenlang_crypto.providers.aws_kms import AwsKmsKeyProvider

        provider = AwsKmsKeyProvider(
            keys=config.kms_key_ids,
            region=config.kms_region,
            endpoint_url=config.kms_endpoint_url,
        )

        def count(request: Any, **_: Any) -> None:
            sent.append(request.headers.get("X-Amz-Target", b"").decode())

        for client in provider.clients.values():
            client.meta.events.register("before-send.kms", count)
    return EncryptionService(config, provider=provider), sent


def decrypt(in_file: Path, out_file: Path) -> None:
    svc, sent = _service()
    ok = 0
    errors: dict[str, int] = {}
    for line in in_file.read_text().splitlines():
        item = json.loads(line)
        ctx = EncryptionContext(item["tenant"], "pii")
        try:
            if svc.decrypt(bytes.fromhex(item["env"]), ctx) == item["pt"].encode():
                ok += 1
        except GreenlangCryptoError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    summary = {
        "sent": sent,
        "ok": ok,
        "errors": errors,
        "branch": svc.branch_key_stats(),
        "redis": svc.key_cache_stats(),
    }
    svc.close()
    out_file.write_text(json.dumps(summary))


def worker(name: str, out_dir: Path) -> None:
    svc, _ = _service()
    ctx = EncryptionContext(tenant_id="fleet", data_class="pii")
    stop = out_dir / "stop"
    with (out_dir / f"worker-{name}.jsonl").open("a") as log:
        seq = 0
        while not stop.exists():
            started = time.time()
            try:
                env = svc.encrypt(f"{name}-{seq}".encode(), ctx)
                record = {
                    "t": started,
                    "branch_id": parse_envelope(env).branch_id,
                    "env": env.hex(),
                }
            except GreenlangCryptoError as exc:
                record = {"t": started, "err": type(exc).__name__}
            log.write(json.dumps(record) + "\n")
            log.flush()
            seq += 1
            time.sleep(0.01)
    (out_dir / f"worker-{name}.stats.json").write_text(
        json.dumps({"branch": svc.branch_key_stats(), "redis": svc.key_cache_stats()})
    )
    svc.close()


if __name__ == "__main__":
    if sys.argv[1] == "decrypt":
        decrypt(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1] == "worker":
        worker(sys.argv[2], Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
