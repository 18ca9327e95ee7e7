"""Blind-index keys in memory: one unwrap per root per TTL, one derivation per purpose, purged
and cleared on demand, and never for a retired version."""

from __future__ import annotations

import time

import pytest

from greenlang_crypto._core import DataKey
from greenlang_crypto.exceptions import KeyStateError
from greenlang_crypto.keys.index_key_store import IndexKeyRecord
from greenlang_crypto.keys.index_keys import INDEX_ROOT_CONTEXT, IndexKeys


def _record(version: int = 1, state: str = "primary") -> IndexKeyRecord:
    return IndexKeyRecord(version, state, "local", "local:master-v1", b"wrapped")


class _Unwrapper:
    """Counts unwraps; each version has one fixed root key."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.roots: dict[int, DataKey] = {}

    def __call__(self, record: IndexKeyRecord) -> DataKey:
        self.calls.append(record.version)
        return self.roots.setdefault(record.version, DataKey.generate())


def test_the_root_context_is_a_system_context_of_its_own() -> None:
    assert INDEX_ROOT_CONTEXT.tenant_id == "_system"
    assert INDEX_ROOT_CONTEXT.data_class == "blind-index-root"


def test_a_root_is_unwrapped_once_and_each_purpose_derived_from_it() -> None:
    unwrap = _Unwrapper()
    keys = IndexKeys(unwrap, ttl=60)
    email = keys.key(_record(), "email")
    assert keys.key(_record(), "email") is email
    phone = keys.key(_record(), "phone")
    assert unwrap.calls == [1]
    assert email.compute(b"a@example.com") != phone.compute(b"a@example.com")
    # The derivation binds the version and the purpose to the root key.
    expected = unwrap.roots[1].derive_index_key(b"v1|email")
    assert email.compute(b"a@example.com") == expected.compute(b"a@example.com")
    assert len(keys) == 3  # one root, two derived keys


def test_versions_have_their_own_roots() -> None:
    unwrap = _Unwrapper()
    keys = IndexKeys(unwrap, ttl=60)
    one = keys.key(_record(1), "email")
    two = keys.key(_record(2, "active"), "email")
    assert unwrap.calls == [1, 2]
    assert one.compute(b"x") != two.compute(b"x")


def test_a_remembered_root_saves_the_unwrap() -> None:
    unwrap = _Unwrapper()
    keys = IndexKeys(unwrap, ttl=60)
    root = DataKey.generate()
    keys.remember_root(3, root)
    key = keys.key(_record(3), "email")
    assert unwrap.calls == []
    assert key.compute(b"x") == root.derive_index_key(b"v3|email").compute(b"x")


def test_a_retired_version_gives_no_key() -> None:
    unwrap = _Unwrapper()
    keys = IndexKeys(unwrap, ttl=60)
    with pytest.raises(KeyStateError):
        keys.key(_record(1, "retired"), "email")
    assert unwrap.calls == [] and len(keys) == 0


def test_keys_older_than_the_ttl_are_unwrapped_again_and_purged() -> None:
    unwrap = _Unwrapper()
    keys = IndexKeys(unwrap, ttl=0.05)
    keys.key(_record(), "email")
    time.sleep(0.1)
    keys.purge()
    assert len(keys) == 0
    keys.key(_record(), "email")
    assert unwrap.calls == [1, 1]
    keys.purge()  # still fresh: kept
    assert len(keys) == 2


def test_forget_drops_one_version_and_clear_drops_all() -> None:
    unwrap = _Unwrapper()
    keys = IndexKeys(unwrap, ttl=60)
    for version in (1, 2):
        keys.key(_record(version), "email")
        keys.key(_record(version), "phone")
    keys.forget(1)
    assert len(keys) == 3
    keys.key(_record(2), "email")
    keys.key(_record(1), "email")
    assert unwrap.calls == [1, 2, 1]
    keys.clear()
    assert len(keys) == 0
