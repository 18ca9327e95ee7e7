"""Key versions, wrapping-key history and stored DEKs on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenlang_crypto.exceptions import KeyStateError
from greenlang_crypto.keys.changes import KeyringChanges
from greenlang_crypto.keys.connection import Database, sqlite_connector
from greenlang_crypto.keys.versions import KeyVersions, StoredDeks


def _db(tmp_path: Path) -> Database:
    path = str(tmp_path / "keystore.db")
    db = Database(sqlite_connector(path), "sqlite", "test", retry_seconds=0.5)
    db.migrate()
    return db


def _versions(tmp_path: Path) -> tuple[KeyVersions, KeyringChanges]:
    db = _db(tmp_path)
    changes = KeyringChanges(db)
    return KeyVersions(db, changes), changes


def test_the_first_version_is_added_once_and_rotation_demotes_the_primary(tmp_path: Path) -> None:
    versions, changes = _versions(tmp_path)
    assert versions.versions() == [] and versions.min_decryption_version() == 1
    assert versions.add_first_version("local", "k1")
    assert not versions.add_first_version("local", "other")
    second = versions.add_primary_version("local", "k2")
    assert (second.version, second.state) == (2, "primary")
    states = [(v.version, v.state, v.wrapping_key_id) for v in versions.versions()]
    assert states == [(1, "active", "k1"), (2, "primary", "k2")]
    assert versions.versions()[0].rotated_at is not None
    assert changes.epoch() == 2


def test_retirement_only_raises_the_minimum_and_never_retires_the_primary(tmp_path: Path) -> None:
    versions, changes = _versions(tmp_path)
    versions.add_first_version("local", "k1")
    versions.add_primary_version("local", "k2")
    versions.add_primary_version("local", "k3")
    with pytest.raises(KeyStateError, match="primary"):
        versions.retire_below(4)
    assert versions.retire_below(3) == 3
    epoch = changes.epoch()
    assert versions.retire_below(2) == 3  # lower: nothing changes
    assert changes.epoch() == epoch
    assert [v.state for v in versions.versions()] == ["retired", "retired", "primary"]
    assert versions.min_decryption_version() == 3


def test_a_rewrapped_version_keeps_its_wrapping_key_history(tmp_path: Path) -> None:
    versions, _ = _versions(tmp_path)
    versions.add_first_version("local", "k1")
    with pytest.raises(KeyStateError, match="does not exist"):
        versions.set_wrapping_key(9, "k9")
    versions.set_wrapping_key(1, "k1b")
    assert versions.versions()[0].wrapping_key_id == "k1b"
    history = versions.wrapping_keys()
    assert [(w.version, w.wrapping_key_id, w.destroyed_at) for w in history] == [
        (1, "k1", None),
        (1, "k1b", None),
    ]
    with pytest.raises(KeyStateError, match="still in use"):
        versions.destroy_wrapping_key("k1b")
    assert versions.destroy_wrapping_key("k1") == 1
    assert versions.destroy_wrapping_key("k1") == 0  # already destroyed
    assert versions.wrapping_keys()[0].destroyed_at is not None


def test_stored_deks_round_trip_and_count_their_usage(tmp_path: Path) -> None:
    deks = StoredDeks(_db(tmp_path))
    ctx = {"tenant_id": "t1", "data_class": "pii"}
    ids = [deks.insert_dek(v, "local", "k", b"wrapped", ctx, b"d" * 32) for v in (1, 1, 2)]
    assert len(set(ids)) == 3 and all(0 <= i < 2**63 for i in ids)
    record = deks.get_dek(ids[0])
    assert record is not None
    assert (record.key_version, record.wrapped, record.context) == (1, b"wrapped", ctx)
    assert deks.get_dek(2**64 - 1) is None and deks.get_dek(-1) is None
    deks.record_usage({ids[0]: (5, 500), ids[2]: (1, 10)})
    deks.record_usage({ids[0]: (3, 300)})  # counters only grow
    deks.record_usage({})
    assert deks.usage_by_version() == {1: (2, 5, 500), 2: (1, 1, 10)}
    assert deks.count_deks_by_version() == {1: 2, 2: 1}


def test_deks_are_rewrapped_by_compare_and_swap_and_deleted_by_version(tmp_path: Path) -> None:
    deks = StoredDeks(_db(tmp_path))
    ids = sorted(deks.insert_dek(v, "local", "k", b"old", {}, b"") for v in (1, 2, 2))
    batches = list(deks.iter_deks(batch_size=2))
    assert [[r.dek_id for r in b] for b in batches] == [ids[:2], ids[2:]]
    assert deks.replace_wrapped(ids[0], b"old", b"new", "k2")
    assert not deks.replace_wrapped(ids[0], b"old", b"newer", "k3")
    record = deks.get_dek(ids[0])
    assert record is not None and (record.wrapped, record.wrapping_key_id) == (b"new", "k2")
    assert deks.delete_deks_below(2) == 1
    assert deks.count_deks_by_version() == {2: 2}
