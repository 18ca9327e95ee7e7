"""Blind-index root key rows on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenlang_crypto.exceptions import KeyStateError
from greenlang_crypto.keys.changes import KeyringChanges
from greenlang_crypto.keys.connection import Database, sqlite_connector
from greenlang_crypto.keys.index_key_store import IndexKeyStore


def _rows(tmp_path: Path) -> tuple[IndexKeyStore, KeyringChanges]:
    path = str(tmp_path / "keystore.db")
    db = Database(sqlite_connector(path), "sqlite", "test", retry_seconds=0.5)
    db.migrate()
    changes = KeyringChanges(db)
    return IndexKeyStore(db, changes), changes


def test_a_new_index_key_becomes_primary_and_the_old_one_active(tmp_path: Path) -> None:
    rows, changes = _rows(tmp_path)
    assert rows.index_keys() == []
    assert rows.add_index_key("local", "k1", b"w1") == 1
    assert rows.add_index_key("local", "k1", b"w2") == 2
    keys = rows.index_keys()
    assert [(k.version, k.state, k.wrapped) for k in keys] == [
        (1, "active", b"w1"),
        (2, "primary", b"w2"),
    ]
    assert changes.epoch() == 2


def test_only_a_non_primary_index_key_changes_state(tmp_path: Path) -> None:
    rows, _ = _rows(tmp_path)
    rows.add_index_key("local", "k1", b"w1")
    rows.add_index_key("local", "k1", b"w2")
    with pytest.raises(KeyStateError, match="active or retired"):
        rows.set_index_key_state(1, "primary")
    with pytest.raises(KeyStateError, match="does not exist"):
        rows.set_index_key_state(7, "retired")
    with pytest.raises(KeyStateError, match="primary index key"):
        rows.set_index_key_state(2, "retired")
    rows.set_index_key_state(1, "retired")
    assert [k.state for k in rows.index_keys()] == ["retired", "primary"]


def test_an_index_key_is_rewrapped_by_compare_and_swap(tmp_path: Path) -> None:
    rows, changes = _rows(tmp_path)
    rows.add_index_key("local", "k1", b"w1")
    epoch = changes.epoch()
    assert not rows.replace_index_wrapped(1, b"stale", b"w1b", "k2")
    assert changes.epoch() == epoch  # a lost swap changes nothing
    assert rows.replace_index_wrapped(1, b"w1", b"w1b", "k2")
    assert changes.epoch() == epoch + 1
    (key,) = rows.index_keys()
    assert (key.wrapped, key.wrapping_key_id) == (b"w1b", "k2")
