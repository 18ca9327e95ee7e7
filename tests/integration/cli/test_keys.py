"""`keys status` and `keys retire --force` against a live instance, in subprocesses."""

from __future__ import annotations

import json
import time
from pathlib import Path

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.service import EncryptionService
from tests.clirun import run


def test_keys_status_shows_instances_and_retire_respects_them(tmp_path: Path) -> None:
    assert run(tmp_path, "init").returncode == 0
    cfg = EncryptionServiceConfig(data_dir=tmp_path / "data", keyring_refresh_seconds=0.2)
    worker = EncryptionService(cfg)
    try:
        assert run(tmp_path, "keys", "rotate").returncode == 0
        # The worker converges on its own within the refresh bound.
        deadline = time.monotonic() + 3
        while worker.primary_version != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        worker.store.heartbeat(
            "laggard0",
            host="old-host",
            pid=77,
            epoch=1,
            primary_version=1,
            min_version=1,
            started_at=time.time(),
        )
        status = json.loads(run(tmp_path, "keys", "status", "--json").stdout)
        assert status["primary_version"] == 2
        rows = {r["instance_id"]: r for r in status["instances"]}
        assert rows[worker.instance_id]["primary_version"] == 2
        assert rows[worker.instance_id]["live"] is True
        assert rows["laggard0"]["current"] is False
        text = run(tmp_path, "keys", "status").stdout.decode()
        assert "old-host:77" in text and "behind" in text
        refused = run(tmp_path, "keys", "retire", "--below", "2")
        assert refused.returncode == 2
        assert b"KeyStateError" in refused.stderr and b"old-host:77" in refused.stderr
        assert worker.min_decryption_version == 1
        forced = run(tmp_path, "keys", "retire", "--below", "2", "--force")
        assert forced.returncode == 0, forced.stderr
        assert b"minimum decryption version is now 2" in forced.stdout
        worker.refresh_keyring()
        assert worker.min_decryption_version == 2
    finally:
        worker.close()
