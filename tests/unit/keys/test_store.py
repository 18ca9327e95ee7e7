"""The key store on SQLite: confirmations, liveness and a damaged file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.keys.store import KeyStore, open_key_store


def _store(tmp_path: Path) -> KeyStore:
    store = open_key_store(f"sqlite:///{tmp_path / 'keystore.db'}", retry_seconds=0.5)
    store.add_first_version("local", "local:v1")
    return store


def _beat(store: KeyStore, name: str, *, expected: int | None, fence: float = 0.0) -> bool:
    return store.heartbeat(
        name,
        host="h",
        pid=1,
        epoch=store.epoch(),
        primary_version=1,
        min_version=1,
        started_at=0.0,
        expected_epoch=expected,
        fence_seconds=fence,
    )


def test_a_confirmation_is_written_only_for_the_current_epoch(tmp_path: Path) -> None:
    store = _store(tmp_path)
    epoch = store.epoch()
    assert _beat(store, "a", expected=epoch)
    store.add_primary_version("local", "local:v2")  # a key change moves the epoch
    assert not _beat(store, "b", expected=epoch)
    assert {i.instance_id for i in store.instances()} == {"a"}
    assert _beat(store, "b", expected=store.epoch())


def test_an_instance_stays_live_for_its_own_fence_when_that_is_longer(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert _beat(store, "short", expected=None, fence=0.0)
    assert _beat(store, "long", expected=None, fence=30.0)
    db = sqlite3.connect(tmp_path / "keystore.db")
    with db:  # both last seen 10 s ago
        db.execute("UPDATE glc_instances SET last_seen = last_seen - 10")
    db.close()
    live = {i.instance_id for i in store.live_instances(5.0)}
    assert live == {"long"}
    assert {i.instance_id: i.fence_seconds for i in store.instances()}["long"] == 30.0


def test_a_damaged_file_is_a_typed_error(tmp_path: Path) -> None:
    _store(tmp_path).close()
    (tmp_path / "keystore.db").write_bytes(b"not a database " * 400)
    for name in ("keystore.db-wal", "keystore.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(ConfigurationError, match="damaged or not a database"):
        open_key_store(f"sqlite:///{tmp_path / 'keystore.db'}")


def test_the_store_keeps_versions_deks_usage_and_index_keys(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.dialect == "sqlite" and repr(store).startswith("KeyStore(sqlite:///")
    assert store.pool_connections() == 0 and store.listen_dsn is None
    store.retry_seconds = 0.25
    assert store.db.retry_seconds == 0.25
    v2 = store.add_primary_version("local", "local:v2")
    assert [v.state for v in store.versions()] == ["active", "primary"]
    dek = store.insert_dek(v2.version, "local", "local:v2", b"wrapped", {"t": "1"}, b"d")
    old = store.insert_dek(1, "local", "local:v1", b"old", {}, b"")
    store.record_usage({dek: (4, 64)}, retry_seconds=0.0)
    assert store.usage_by_version() == {1: (1, 0, 0), 2: (1, 4, 64)}
    record = store.get_dek(dek)
    assert record is not None and record.context == {"t": "1"}
    assert store.replace_wrapped(old, b"old", b"rewrapped", "local:v2")
    assert [len(batch) for batch in store.iter_deks()] == [2]
    store.set_wrapping_key(1, "local:v2")
    assert store.destroy_wrapping_key("local:v1") == 1
    assert {w.wrapping_key_id for w in store.wrapping_keys()} == {"local:v1", "local:v2"}
    assert store.retire_below(2) == 2 and store.min_decryption_version() == 2
    assert store.delete_deks_below(2) == 1 and store.count_deks_by_version() == {2: 1}
    assert store.add_index_key("local", "local:v2", b"root") == 1
    assert store.replace_index_wrapped(1, b"root", b"root2", "local:v2")
    store.add_index_key("local", "local:v2", b"next")
    store.set_index_key_state(1, "retired")
    assert [(k.state, k.wrapped) for k in store.index_keys()] == [
        ("retired", b"root2"),
        ("primary", b"next"),
    ]
    assert store.unfinished_job_ranges() == 0
    store.notify("glc_keyring")  # SQLite: nothing to send
    store.close()


def test_instances_are_listed_pruned_and_removed_through_the_store(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert _beat(store, "a", expected=None)
    now, rows = store.instances_and_clock()
    assert [r.instance_id for r in rows] == ["a"] and now >= rows[0].last_seen
    store.remove_instance("a")
    assert store.instances() == []
    assert _beat(store, "b", expected=None)
    assert store.prune_instances(now + 3600) == 1
    store.close()


def test_the_autopilots_last_step_is_kept_and_replaced(tmp_path: Path) -> None:
    store = open_key_store(f"sqlite:///{tmp_path / 'keystore.db'}", retry_seconds=0.5)
    try:
        assert store.last_autopilot_step() is None
        store.record_autopilot_step(
            "blocked", ["t.c has 3 row(s) under versions below 2"], "h:1", 5.0
        )
        assert store.last_autopilot_step() == {
            "status": "blocked",
            "reasons": ["t.c has 3 row(s) under versions below 2"],
            "runner": "h:1",
            "finished_at": 5.0,
        }
        store.record_autopilot_step("done", [], "h:2", 6.0)
        assert store.last_autopilot_step() == {
            "status": "done",
            "reasons": [],
            "runner": "h:2",
            "finished_at": 6.0,
        }
    finally:
        store.close()
