"""The keyring's change counter on SQLite."""

from __future__ import annotations

from pathlib import Path

from greenlang_crypto.keys.changes import NOTIFY_CHANNEL, KeyringChanges
from greenlang_crypto.keys.store import open_key_store


def test_each_bump_counts_one_change_in_the_callers_transaction(tmp_path: Path) -> None:
    store = open_key_store(f"sqlite:///{tmp_path / 'keystore.db'}", retry_seconds=0.5)
    store.add_first_version("local", "local:v1")  # creates the counter's row
    changes = KeyringChanges(store.db)
    start = changes.epoch()
    with store.db.transaction(serialized=True) as cur:
        changes.bump(cur)
        assert changes.bump_and_read(cur) == start + 2
    assert changes.epoch() == store.epoch() == start + 2
    store.close()


def test_notify_is_a_no_op_without_postgresql(tmp_path: Path) -> None:
    store = open_key_store(f"sqlite:///{tmp_path / 'keystore.db'}", retry_seconds=0.5)
    epoch = store.epoch()
    store.changes.notify(NOTIFY_CHANNEL)
    store.changes.notify("not an identifier")  # nothing is sent, so nothing is checked
    assert store.epoch() == epoch
    store.close()
