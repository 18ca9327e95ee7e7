"""Branch key rows on SQLite: creation races, rotation, deletion and change rows."""

from __future__ import annotations

from pathlib import Path

from greenlang_crypto.keys.branch_store import BranchKeyRecord, BranchKeyStore
from greenlang_crypto.keys.store import KeyStore, open_key_store


def _store(tmp_path: Path) -> KeyStore:
    store = open_key_store(f"sqlite:///{tmp_path / 'keystore.db'}", retry_seconds=0.5)
    store.add_first_version("local", "k1")
    return store


def _record(rows: BranchKeyStore, scope: str, key_version: int = 1) -> BranchKeyRecord:
    return BranchKeyRecord(rows.new_id(), scope, 0, key_version, "active", "local", "k1", b"w", 1.0)


def test_the_first_key_of_a_scope_wins_a_creation_race(tmp_path: Path) -> None:
    rows = BranchKeyStore(_store(tmp_path))
    assert rows.current("tenant:a", 1) is None
    first = rows.insert(_record(rows, "tenant:a"), rotate=False)
    assert (first.branch_version, first.state) == (1, "active")
    loser = rows.insert(_record(rows, "tenant:a"), rotate=False)
    assert loser == first  # the other process's key is used, ours is dropped
    assert rows.current("tenant:a", 1) == first == rows.get(first.branch_id)
    assert rows.get(2**32) is None and rows.changes_since(0) == []


def test_a_rotation_demotes_the_active_key_and_writes_a_change_row(tmp_path: Path) -> None:
    store = _store(tmp_path)
    rows = BranchKeyStore(store)
    old = rows.insert(_record(rows, "service"), rotate=False)
    epoch = store.epoch()
    new = rows.insert(_record(rows, "service"), rotate=True)
    assert new.branch_version == 2 and rows.current("service", 1) == new
    demoted = rows.get(old.branch_id)
    assert demoted is not None and demoted.state == "decrypt_only"
    assert rows.changes_since(epoch) == [(epoch + 1, "service", "rotate")]
    assert rows.count_by_version() == {1: 2}


def test_deletion_by_scope_and_by_version_counts_as_changes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    rows = BranchKeyStore(store)
    a = rows.insert(_record(rows, "tenant:a"), rotate=False)
    rows.insert(_record(rows, "tenant:b", key_version=2), rotate=False)
    epoch = store.epoch()
    assert rows.delete_scope("tenant:a") == [(a.branch_id, 1)]
    assert rows.delete_scope("tenant:a") == []  # nothing left: no change row
    assert rows.delete_below(2) == 0
    assert rows.delete_below(3) == 1
    rows.rewrapped()
    actions = [(s, a) for _, s, a in rows.changes_since(epoch)]
    assert actions == [("tenant:a", "delete"), ("*", "delete"), ("*", "rewrap")]
    assert store.epoch() == epoch + 3


def test_branch_keys_are_listed_in_batches_and_rewrapped_by_swap(tmp_path: Path) -> None:
    rows = BranchKeyStore(_store(tmp_path))
    made = sorted(rows.insert(_record(rows, f"s{i}"), rotate=False).branch_id for i in range(3))
    listed = [[r.branch_id for r in batch] for batch in rows.iter_all(batch_size=2)]
    assert listed == [made[:2], made[2:]]
    assert rows.replace_wrapped(made[0], b"w", b"w2", "k2")
    assert not rows.replace_wrapped(made[0], b"w", b"w3", "k3")
    record = rows.get(made[0])
    assert record is not None and (record.wrapped, record.wrapping_key_id) == (b"w2", "k2")


def _made_at(rows: BranchKeyStore, scope: str, at: float, key_version: int = 1) -> None:
    record = BranchKeyRecord(
        rows.new_id(), scope, 0, key_version, "active", "local", "k1", b"w", at
    )
    rows.insert(record, rotate=rows.current(scope, key_version) is not None)


def test_the_oldest_active_keys_are_found_per_key_version(tmp_path: Path) -> None:
    rows = BranchKeyStore(_store(tmp_path))
    assert rows.oldest_active(1) is None
    _made_at(rows, "tenant:a", 30.0)
    _made_at(rows, "tenant:b", 10.0)
    _made_at(rows, "tenant:c", 20.0)
    _made_at(rows, "tenant:d", 5.0, key_version=2)
    assert rows.oldest_active(1) == 10.0
    assert rows.oldest_active(2) == 5.0
    # Oldest first, bounded, and only scopes whose active key predates the cutoff.
    assert rows.scopes_created_before(1, 25.0, limit=10) == ["tenant:b", "tenant:c"]
    assert rows.scopes_created_before(1, 25.0, limit=1) == ["tenant:b"]
    # A rotated scope counts by its new key, not the demoted one.
    _made_at(rows, "tenant:b", 40.0)
    assert rows.oldest_active(1) == 20.0
    assert rows.scopes_created_before(1, 35.0, limit=10) == ["tenant:c", "tenant:a"]
