"""Tenant erasure rows on SQLite and PostgreSQL: the two phases, joins, tombstones, refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenlang_crypto.exceptions import DataErasedError, TenantErasingError
from greenlang_crypto.keys.branch_store import BranchKeyRecord, BranchKeyStore
from greenlang_crypto.keys.erasures import ERASED, ERASING, tenant_of_scope
from greenlang_crypto.keys.keyring import Keyring
from greenlang_crypto.keys.store import KeyStore, open_key_store
from tests.conftest import pg_private_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        opened = open_key_store(f"sqlite:///{tmp_path / 'keystore.db'}", retry_seconds=0.5)
        try:
            opened.add_first_version("local", "k1")
            yield opened
        finally:
            opened.close()
        return
    with pg_private_database("glc_erasures") as url:
        opened = open_key_store(url, retry_seconds=0.5)
        try:
            opened.add_first_version("local", "k1")
            yield opened
        finally:
            opened.close()


def _dek(store: KeyStore, tenant: str) -> int:
    ctx = {"tenant_id": tenant, "data_class": "pii"}
    return store.insert_dek(1, "local", "k1", b"wrapped", ctx, b"d" * 32)


def _branch(rows: BranchKeyStore, scope: str) -> BranchKeyRecord:
    record = BranchKeyRecord(rows.new_id(), scope, 0, 1, "active", "local", "k1", b"w", 1.0)
    return rows.insert(record, rotate=False)


def test_tenant_of_scope_reads_only_tenant_scopes() -> None:
    assert tenant_of_scope("tenant:acme") == "acme"
    assert tenant_of_scope("tenant:") == ""
    assert tenant_of_scope("service") is None


def test_the_two_phases_delete_only_the_tenants_keys_and_leave_tombstones(
    store: KeyStore,
) -> None:
    erasures = store.erasures
    rows = BranchKeyStore(store)
    mine, other = _dek(store, "acme"), _dek(store, "globex")
    branch = _branch(rows, "tenant:acme")
    kept = _branch(rows, "tenant:globex")
    epoch = store.epoch()

    record, began = erasures.begin("acme")
    assert began and record.state == ERASING and record.started_epoch == epoch + 1
    assert store.epoch() == epoch + 1 and erasures.erasing() == frozenset({"acme"})
    assert erasures.last_change() == epoch + 1
    # Phase 1 deletes nothing yet.
    assert store.get_dek(mine) is not None and rows.get(branch.branch_id) is not None

    done = erasures.complete("acme", "tenant:acme")
    assert done is not None
    assert done.dek_ids == (mine,) and done.branch_ids == ((branch.branch_id, 1),)
    assert done.epoch == epoch + 2 == store.epoch() == erasures.last_change()
    after = erasures.get("acme")
    assert after is not None and after.state == ERASED and after.erasures == 1
    assert after.index_salt is not None and len(after.index_salt) == 32
    assert "index_salt" not in repr(after)
    assert erasures.erasing() == frozenset()
    # The keys are gone; their tombstones answer "erased", others stay untouched.
    with pytest.raises(DataErasedError) as caught:
        store.get_dek(mine)
    assert str(mine) not in str(caught.value) and "acme" not in str(caught.value)
    assert rows.get(branch.branch_id) is None and rows.erased(branch.branch_id)
    assert erasures.was_erased("stored", mine) and erasures.was_erased("branch", branch.branch_id)
    assert not erasures.was_erased("stored", other) and store.get_dek(other) is not None
    assert rows.get(kept.branch_id) is not None and not rows.erased(kept.branch_id)
    assert erasures.count_tombstones("acme") == 2 and erasures.count_tombstones("globex") == 0
    # Instances drop the branch keys through the usual change row.
    assert (done.epoch, "tenant:acme", "delete") in rows.changes_since(epoch)
    # Ids no key ever had (and that BIGINT could not hold) are simply not erased.
    assert not erasures.was_erased("stored", 2**64 - 1) and store.get_dek(2**64 - 1) is None


def test_a_second_admin_joins_the_erasure_and_the_slower_one_deletes_nothing(
    store: KeyStore,
) -> None:
    erasures = store.erasures
    dek = _dek(store, "acme")
    first, began_first = erasures.begin("acme")
    second, began_second = erasures.begin("acme")
    assert began_first and not began_second and second == first
    done = erasures.complete("acme", "tenant:acme")
    assert done is not None and done.dek_ids == (dek,)
    # Written after the erasure completed: a fresh key, which the late admin must not delete.
    fresh = _dek(store, "acme")
    epoch = store.epoch()
    assert erasures.complete("acme", "tenant:acme") is None
    assert store.get_dek(fresh) is not None and store.epoch() == epoch


def test_erasing_a_tenant_without_keys_records_the_erasure(store: KeyStore) -> None:
    erasures = store.erasures
    assert erasures.get("nobody") is None and erasures.complete("nobody", "tenant:nobody") is None
    erasures.begin("nobody")
    done = erasures.complete("nobody", "tenant:nobody")
    assert done is not None and done.dek_ids == () and done.branch_ids == ()
    record = erasures.get("nobody")
    assert record is not None and record.state == ERASED and record.erased_at is not None


def test_a_later_erasure_starts_over_and_replaces_the_index_salt(store: KeyStore) -> None:
    erasures = store.erasures
    erasures.begin("acme")
    erasures.complete("acme", "tenant:acme")
    first = erasures.get("acme")
    record, began = erasures.begin("acme")
    assert began and record.state == ERASING and first is not None
    assert record.started_epoch > first.started_epoch
    erasures.complete("acme", "tenant:acme")
    second = erasures.get("acme")
    assert second is not None and second.erasures == 2
    assert second.index_salt != first.index_salt


def test_no_key_of_a_tenant_is_stored_while_it_is_being_erased(store: KeyStore) -> None:
    erasures = store.erasures
    rows = BranchKeyStore(store)
    erasures.begin("acme")
    deks = store.count_deks_by_version()
    with pytest.raises(TenantErasingError) as caught:
        _dek(store, "acme")
    assert "acme" not in str(caught.value)
    with pytest.raises(TenantErasingError):
        _branch(rows, "tenant:acme")
    assert store.count_deks_by_version() == deks and rows.current("tenant:acme", 1) is None
    # Other tenants are not affected.
    _dek(store, "globex")
    _branch(rows, "tenant:globex")
    # Once erased, the tenant's new keys are fresh ones, stored as usual.
    erasures.complete("acme", "tenant:acme")
    fresh = _dek(store, "acme")
    assert store.get_dek(fresh) is not None and _branch(rows, "tenant:acme") is not None


def test_branch_only_completion_keeps_stored_deks_and_the_index_salt(store: KeyStore) -> None:
    erasures = store.erasures
    rows = BranchKeyStore(store)
    dek = _dek(store, "acme")
    branch = _branch(rows, "tenant:acme")
    erasures.begin("acme")
    done = erasures.complete("acme", "tenant:acme", stored=False)
    assert done is not None and done.dek_ids == () and len(done.branch_ids) == 1
    assert store.get_dek(dek) is not None and rows.erased(branch.branch_id)
    record = erasures.get("acme")
    assert record is not None and record.index_salt is None


def test_stored_deks_written_before_the_tenant_column_are_found_by_their_context(
    store: KeyStore,
) -> None:
    dek = _dek(store, "acme")
    # A row from before V015: the tenant only inside the context JSON.
    with store.db.transaction() as cur:
        cur.execute(store.db.sql("UPDATE glc_deks SET tenant_id = NULL WHERE dek_id = ?"), (dek,))
        cur.execute(store.db.sql("SELECT context_json FROM glc_deks WHERE dek_id = ?"), (dek,))
        assert json.loads(cur.fetchone()[0])["tenant_id"] == "acme"
    store.erasures.begin("acme")
    done = store.erasures.complete("acme", "tenant:acme")
    assert done is not None and done.dek_ids == (dek,)


def test_deleting_a_tenant_scope_leaves_tombstones_and_ids_are_never_reused(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = BranchKeyStore(store)
    branch = _branch(rows, "tenant:acme")
    assert rows.delete_scope("tenant:acme") == [(branch.branch_id, 1)]
    assert rows.erased(branch.branch_id)
    assert store.erasures.count_tombstones("acme") == 1
    # A 32-bit id collision cannot be produced on demand: the random source repeats the
    # erased id once, and the allocator must skip it.
    draws = iter([branch.branch_id.to_bytes(4, "big"), (7).to_bytes(4, "big")])
    monkeypatch.setattr("greenlang_crypto.keys.branch_store.random_bytes", lambda n: next(draws))
    assert rows.new_id() == 7


def test_the_keyring_snapshot_carries_the_tenants_being_erased(store: KeyStore) -> None:
    keyring = Keyring(store, lambda: ("local", "k1"), refresh_seconds=0)
    assert keyring.snapshot.erasing == frozenset() and keyring.snapshot.erasure_epoch == 0
    store.erasures.begin("acme")
    assert keyring.refresh()
    began = keyring.snapshot
    assert began.erasing == frozenset({"acme"}) and began.erasure_epoch == began.epoch
    store.erasures.complete("acme", "tenant:acme")
    assert keyring.refresh()
    done = keyring.snapshot
    assert done.erasing == frozenset() and done.erasure_epoch == done.epoch > began.epoch
