from __future__ import annotations

import pytest

from greenlang_crypto.service import EncryptionService

from .conftest import CTX, store_state


def test_key_reads_leave_the_key_store_unchanged(svc: EncryptionService) -> None:
    svc.encrypt(b"x", CTX, key_reference="stored")
    before = store_state(svc)
    assert svc.index_key_versions() == []
    assert [v.version for v in svc.versions()] == [1]
    assert svc.retirement_blockers(1) == []
    assert svc.stored_dek_count() == 1
    svc.instances()
    svc.branch_key_stats()
    assert store_state(svc) == before
    assert svc.index_key_versions() == []


@pytest.mark.parametrize("path", ["active_index_versions", "blind_index_key"])
def test_the_paths_that_need_an_index_key_create_the_first(
    svc: EncryptionService, path: str
) -> None:
    if path == "active_index_versions":
        assert svc.active_index_versions() == [1]
    else:
        svc.blind_index_key("users.email").compute(b"a@example.com")
    assert svc.index_key_versions() == [(1, "primary")]
    assert svc.rotate_index_key() == 2
    assert svc.active_index_versions() == [2, 1]


def test_system_keys_round_trip_through_the_handle(svc: EncryptionService) -> None:
    handle = svc.system_keys
    assert handle.provider_name == svc.provider_name == "local"
    generated = handle.generate(CTX)
    key = handle.unwrap(handle.provider_name, generated.key_id, generated.wrapped, CTX)
    assert key.fingerprint == generated.key.fingerprint
