from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto._core import CacheSlot, DekCache
from greenlang_crypto.exceptions import DataErasedError, TenantErasingError

from .conftest import CTX, make_service


def test_the_slot_holds_the_current_cache() -> None:
    first, second = DekCache(), DekCache()
    slot = CacheSlot(first)
    assert slot.get() is first
    slot.set(second)
    assert slot.get() is second


def test_replacing_the_caches_moves_the_slot_and_the_envelope(tmp_path: Path) -> None:
    svc = make_service(tmp_path)
    try:
        runtime = svc._runtime
        before = runtime.enc_cache
        svc.rotate()
        assert runtime.enc_cache is not before
        assert runtime.slot is not None and runtime.slot.get() is runtime.enc_cache
        assert svc._enc_cache is runtime.enc_cache
        svc.disable_cached_keys()
        assert runtime.slot.get() is runtime.enc_cache
        assert len(runtime.dec_cache) == 0
    finally:
        svc.close()


def test_nothing_but_the_caller_keeps_the_service_alive(tmp_path: Path) -> None:
    # The roles never point back at the facade: dropping it stops the keyring at once.
    svc = make_service(tmp_path, keyring_refresh_seconds=60)
    svc.decrypt(svc.encrypt(b"x", CTX), CTX)
    keyring = svc._keyring
    ref = weakref.ref(svc)
    del svc
    assert ref() is None
    gc.collect()
    assert keyring._thread is None


@pytest.mark.parametrize("reference", ["stored", "branch"])
def test_another_instance_drops_its_keys_for_an_erased_tenant(
    tmp_path: Path, reference: str
) -> None:
    # Two instances on one key store; the second follows the first's erasure when it loads
    # the keyring (refresh is off here, so the test says when).
    ctx = EncryptionContext(tenant_id="acme", data_class="pii")
    admin = make_service(tmp_path, key_reference=reference)
    other = make_service(tmp_path, key_reference=reference)
    try:
        seal = other.value_encryptor(ctx)
        open_ = other.value_decryptor(ctx)
        written = seal(b"before")
        assert open_(written) == b"before"  # its DEK is in the other's decryption cache
        runtime = other._runtime
        slot_cache = runtime.slot.get() if runtime.slot is not None else None
        admin.store.erasures.begin("acme")
        other.refresh_keyring()
        # Phase 1 loaded: new caches behind the slot, the old ones fenced, the tenant refused.
        assert runtime.slot is not None and runtime.slot.get() is not slot_cache
        assert len(runtime.dec_cache) == 0 and runtime.erasing == frozenset({"acme"})
        with pytest.raises(TenantErasingError):
            seal(b"during")
        admin.erase_tenant("acme")
        other.refresh_keyring()
        assert runtime.erasing == frozenset()
        with pytest.raises(DataErasedError):
            open_(written)
        fresh = seal(b"after")
        assert open_(fresh) == b"after" and not other.is_erased(fresh)
    finally:
        other.close()
        admin.close()
