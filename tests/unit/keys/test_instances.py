"""Instance rows on SQLite: registration, clock, pruning, removal.

Confirmations against the epoch and fence-aware liveness are covered through the store in
test_store.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from greenlang_crypto.keys.connection import Database, sqlite_connector
from greenlang_crypto.keys.instances import InstanceStore


def _rows(tmp_path: Path) -> InstanceStore:
    path = str(tmp_path / "keystore.db")
    db = Database(sqlite_connector(path), "sqlite", "test", retry_seconds=0.5)
    db.migrate()
    return InstanceStore(db)


def _beat(rows: InstanceStore, name: str, *, epoch: int = 0, pid: int = 1) -> bool:
    return rows.heartbeat(
        name, host="h", pid=pid, epoch=epoch, primary_version=1, min_version=1, started_at=5.0
    )


def test_a_heartbeat_registers_then_refreshes_one_row(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    assert _beat(rows, "a", epoch=1)
    assert _beat(rows, "a", epoch=3, pid=99)  # the pid is the registration's: kept
    (only,) = rows.instances()
    assert (only.instance_id, only.pid, only.epoch, only.started_at) == ("a", 1, 3, 5.0)
    before = time.time()
    now, listed = rows.instances_and_clock()
    assert listed == [only] and before <= now <= time.time()
    assert now - only.last_seen < 60


def test_stale_rows_are_pruned_and_a_clean_shutdown_removes_its_own(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    _beat(rows, "a")
    _beat(rows, "b")
    assert {i.instance_id for i in rows.live_instances(60.0)} == {"a", "b"}
    rows.remove_instance("a", retry_seconds=0.0)
    assert [i.instance_id for i in rows.instances()] == ["b"]
    assert rows.prune_instances(time.time() - 3600) == 0
    assert rows.prune_instances(time.time() + 1) == 1
    assert rows.instances() == []
