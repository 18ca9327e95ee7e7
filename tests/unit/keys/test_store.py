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
