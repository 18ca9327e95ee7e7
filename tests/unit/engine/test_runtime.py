from __future__ import annotations

import gc
import weakref
from pathlib import Path

from greenlang_crypto._core import CacheSlot, DekCache

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
