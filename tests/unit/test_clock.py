"""The injectable clock: ManualClock, DEK caches built on it, and a keyring reading it."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto._core import DataKey, DekCache, EnvelopeSealer, ManualClock, monotonic_ns
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.keys.keyring import SYSTEM_CLOCK, Keyring, fence_seconds
from greenlang_crypto.keys.store import open_key_store

CTX = EncryptionContext("t1", "pii").canonical


def sealer() -> EnvelopeSealer:
    return EnvelopeSealer(DataKey.generate(), key_version=1, context=CTX, dek_id=1)


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock()
    assert clock.now_ns() == 0
    time.sleep(0.01)
    assert clock.now_ns() == 0
    clock.advance(1.5)
    assert clock.now_ns() == 1_500_000_000
    clock.advance(0)
    assert clock.now_ns() == 1_500_000_000
    clock.set_ns(7)
    assert clock.now_ns() == 7
    assert ManualClock(123).now_ns() == 123
    assert "now_ns=7" in repr(clock)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), -1e-9])
def test_advance_refuses_going_back_or_nonsense(bad: float) -> None:
    clock = ManualClock(10)
    with pytest.raises(InvalidArgumentError):
        clock.advance(bad)
    assert clock.now_ns() == 10


def test_manual_clock_refuses_negative_start_and_pickling() -> None:
    with pytest.raises(OverflowError):
        ManualClock(-1)
    with pytest.raises(TypeError):
        pickle.dumps(ManualClock())


def test_concurrent_advances_all_count() -> None:
    clock = ManualClock()

    def step() -> None:
        for _ in range(1000):
            clock.advance(1e-9)

    threads = [threading.Thread(target=step) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now_ns() == 4000


def test_cache_ttl_and_age_follow_the_clock() -> None:
    clock = ManualClock(5_000)
    cache = DekCache(10, 60.0, clock=clock)
    assert cache.now_ns() == 5_000
    cache.put(b"a", DataKey.generate())
    clock.advance(59.0)
    hit = cache.get_with_age(b"a")
    assert hit is not None and hit[1] == pytest.approx(59.0)
    assert cache.usage()["max_age_seconds"] == pytest.approx(59.0)
    clock.advance(1.0)
    assert cache.get(b"a") is None
    assert cache.stats()["expirations"] == 1


def test_cache_refresh_ahead_reads_the_clock() -> None:
    clock = ManualClock()
    cache = DekCache(10, 60.0, clock=clock)
    cache.put(b"s", sealer())
    assert cache.seal(b"s", b"x", max_age=30.0) is not None
    clock.advance(29.0)
    assert cache.seal(b"s", b"x", max_age=30.0) is not None
    clock.advance(1.0)
    # Older than max_age: a miss, so the caller fetches a fresh DEK; without max_age the
    # entry still serves until its TTL.
    assert cache.seal(b"s", b"x", max_age=30.0) is None
    assert cache.seal(b"s", b"x") is not None
    clock.advance(30.0)
    assert cache.seal(b"s", b"x") is None


def test_cache_fence_is_read_on_the_clock() -> None:
    clock = ManualClock(1_000_000_000)
    cache = DekCache(10, 300.0, clock=clock)
    cache.put(b"s", sealer())
    cache.set_fence(clock.now_ns() + 2_000_000_000)
    # Real time passing moves nothing; the fence closes when the clock reaches it.
    time.sleep(0.01)
    assert cache.seal(b"s", b"x") is not None
    clock.advance(1.999)
    assert cache.seal(b"s", b"x") is not None
    clock.advance(0.001)
    assert cache.seal(b"s", b"x") is None
    cache.set_fence(None)
    assert cache.seal(b"s", b"x") is not None


def test_caches_without_a_clock_read_the_system_clock() -> None:
    clock = ManualClock()
    cache = DekCache(10, 1.0)
    before = monotonic_ns()
    assert before <= cache.now_ns() <= monotonic_ns()
    cache.put(b"a", DataKey.generate())
    clock.advance(3600.0)
    assert cache.get(b"a") is not None
    assert SYSTEM_CLOCK.now_ns() >= before


def test_caches_on_one_clock_share_its_time() -> None:
    clock = ManualClock()
    first, second = DekCache(10, 10.0, clock=clock), DekCache(10, 20.0, clock=clock)
    first.put(b"a", DataKey.generate())
    second.put(b"a", DataKey.generate())
    clock.advance(10.0)
    assert first.get(b"a") is None and second.get(b"a") is not None
    clock.advance(10.0)
    assert second.get(b"a") is None


def test_keyring_fence_deadline_is_on_its_clock(tmp_path: Path) -> None:
    store = open_key_store(f"sqlite:///{tmp_path / 'keys.db'}")
    clock = ManualClock(50 * 10**9)
    keyring = Keyring(store, lambda: ("local", "local:master-v1"), refresh_seconds=2.0, clock=clock)
    cache = DekCache(10, 300.0, clock=clock)
    cache.put(b"s", sealer())
    keyring.add_fence_listener(cache.set_fence)
    try:
        assert keyring.clock is clock
        assert keyring.fence_deadline_ns == 0
        assert keyring.confirm()
        grant = int(fence_seconds(2.0) * 1e9)
        assert keyring.fence_deadline_ns == 50 * 10**9 + grant
        assert cache.fence_deadline == keyring.fence_deadline_ns
        clock.advance(fence_seconds(2.0) - 0.001)
        assert cache.seal(b"s", b"x") is not None
        clock.advance(0.001)
        assert cache.seal(b"s", b"x") is None, "the fence passed on the shared clock"
        # A confirmation grants a fence from the clock's reading, not the system's.
        assert keyring.confirm()
        assert keyring.fence_deadline_ns == clock.now_ns() + grant
        assert cache.seal(b"s", b"x") is not None
    finally:
        keyring.stop()
        store.close()


def test_keyring_without_a_clock_uses_the_system_one(tmp_path: Path) -> None:
    store = open_key_store(f"sqlite:///{tmp_path / 'keys.db'}")
    keyring = Keyring(store, lambda: ("local", "local:master-v1"), refresh_seconds=2.0)
    try:
        assert keyring.clock is SYSTEM_CLOCK
        before = monotonic_ns()
        assert keyring.confirm()
        deadline = keyring.fence_deadline_ns
        assert deadline is not None
        assert before + int(fence_seconds(2.0) * 1e9) <= deadline <= monotonic_ns() + 5 * 10**9
    finally:
        keyring.stop()
        store.close()
