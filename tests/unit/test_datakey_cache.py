"""DataKey budgets and nonces, the DEK cache (expiry, isolation, bounds, fork, pickling), and
secret hygiene (reprs and exception chains)."""

from __future__ import annotations

import copy
import gc
import inspect
import os
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import greenlang_crypto
from greenlang_crypto import _core as core
from greenlang_crypto.exceptions import (
    DecryptionError,
    InvalidArgumentError,
    InvalidKeyError,
    KeyUsageExceededError,
    PayloadTooLargeError,
)
from greenlang_crypto.hazmat import export_key_bytes

CTX = core.canonical_context({"tenant_id": "t1", "data_class": "pii"})


def nonce_of(sealed: bytes) -> bytes:
    return sealed[:12]


def test_million_seals_no_repeated_nonce() -> None:
    # 10^6 seals under one key, every nonce distinct; equal plaintexts never repeat.
    k = core.DataKey.generate()
    seen = {nonce_of(k.seal(b"same")) for _ in range(1_000_000)}
    assert len(seen) == 1_000_000
    assert k.messages_used == 1_000_000


def test_usage_limit_is_hard() -> None:
    # At the usage limit the key refuses; it never goes past it.
    k = core.DataKey.generate(max_messages=1000)
    for _ in range(1000):
        k.seal(b"x")
    with pytest.raises(KeyUsageExceededError):
        k.seal(b"x")
    assert k.messages_used == 1000 and k.exhausted
    k2 = core.DataKey.generate(max_messages=10, max_bytes=100)
    k2.seal(b"x" * 100)
    assert k2.exhausted
    with pytest.raises(KeyUsageExceededError):
        k2.seal(b"x")


def test_batch_budget_is_all_or_nothing() -> None:
    k = core.DataKey.generate(max_messages=5)
    with pytest.raises(KeyUsageExceededError):
        k.seal_batch([b"a"] * 6)
    assert k.messages_used == 0
    assert len(k.seal_batch([b"a"] * 5)) == 5


@pytest.mark.parametrize("limit", [0, 2**32 + 1, -1])
def test_limit_bounds(limit: int) -> None:
    with pytest.raises((InvalidArgumentError, OverflowError)):
        core.DataKey.generate(max_messages=limit)


def test_threads_exact_counters_and_unique_nonces() -> None:
    # Use counters under contention: many threads under one cached key; counters exact, no
    # repeated nonces.
    k = core.DataKey.generate(max_messages=40_000)
    results: list[list[bytes]] = []
    lock = threading.Lock()

    def work() -> None:
        local = []
        for _ in range(6_000):
            try:
                local.append(nonce_of(k.seal(b"v")))
            except KeyUsageExceededError:
                break
        with lock:
            results.append(local)

    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(8):
            pool.submit(work)
    nonces = [n for r in results for n in r]
    assert len(nonces) == 40_000 == k.messages_used
    assert len(set(nonces)) == len(nonces)


def test_large_inputs_release_the_gil_and_round_trip() -> None:
    k = core.DataKey.generate()
    payload = os.urandom(core.DETACH_THRESHOLD * 4)

    def work(_: int) -> bool:
        return k.open(k.seal(payload, b"a"), b"a") == payload

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(work, range(16)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork only")
def test_fork_child_gets_fresh_nonces_and_empty_cache() -> None:
    # Fork safety: the per-thread nonce pool and the cache must not be shared with a forked child.
    k = core.DataKey.generate()
    cache = core.DekCache()
    cache.put(b"id", k)
    k.seal(b"warm the pool")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(r)
            nonces = b"".join(nonce_of(k.seal(b"x")) for _ in range(8))
            flag = b"E" if len(cache) == 0 else b"F"
            os.write(w, flag + nonces)
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    parent = {nonce_of(k.seal(b"x")) for _ in range(8)}
    child = {data[1 + 12 * i : 13 + 12 * i] for i in range(8)}
    assert data[:1] == b"E", "forked child must start with an empty DEK cache"
    assert len(child) == 8 and not (parent & child)


def test_no_public_api_takes_a_nonce() -> None:
    # No public API takes a nonce except hazmat.AESGCM.
    public = [core.DataKey.seal, core.DataKey.seal_batch, core.EnvelopeSealer.seal]
    for fn in public:
        sig = getattr(fn, "__text_signature__", "") or ""
        assert "nonce" not in sig, fn
    for name in greenlang_crypto.__all__:
        obj = getattr(greenlang_crypto, name)
        if callable(obj):
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            assert "nonce" not in params, name


def test_cache_hit_miss_stats_and_ttl() -> None:
    c = core.DekCache(max_entries=10, ttl_seconds=0.05)
    k = core.DataKey.generate()
    assert c.get(b"a") is None
    c.put(b"a", k)
    hit = c.get(b"a")
    assert isinstance(hit, core.DataKey) and hit.fingerprint == k.fingerprint
    time.sleep(0.08)
    assert c.get(b"a") is None  # no use after expiry
    s = c.stats()
    assert (s["hits"], s["misses"], s["expirations"], s["size"]) == (1, 2, 1, 0)


def test_cache_retires_spent_key() -> None:
    c = core.DekCache()
    k = core.DataKey.generate(max_messages=3)
    s = core.EnvelopeSealer(k, key_version=1, context=CTX, dek_id=1)
    c.put(b"enc", s)
    outs = [c.seal(b"enc", b"v") for _ in range(4)]
    assert all(o is not None for o in outs[:3]) and outs[3] is None
    assert c.get(b"enc") is None


def test_cache_seal_and_open_fast_paths() -> None:
    c = core.DekCache()
    k = core.DataKey.generate()
    sealer = core.EnvelopeSealer(k, key_version=1, context=CTX, dek_id=5)
    c.put(b"enc", sealer)
    env = c.seal(b"enc", b"hello", b"row")
    assert env is not None
    assert c.open(env, CTX, b"row") is None  # the decrypt side is keyed by key reference
    c.put(core.stored_key_ref_id(5), k)
    assert c.open(env, CTX, b"row") == b"hello"
    with pytest.raises(DecryptionError):
        c.open(env, CTX, b"other-row")


def test_repeated_hits_never_outlive_clear_remove_ttl_or_replacement() -> None:
    # Repeated lookups of one id are served from a per-thread memo of the last hit; every
    # change to the cache must invalidate it, on the seal and the open path alike.
    c = core.DekCache(ttl_seconds=0.2)
    k = core.DataKey.generate()
    c.put(b"enc", core.EnvelopeSealer(k, key_version=1, context=CTX, dek_id=5))
    c.put(core.stored_key_ref_id(5), k)
    env = c.seal(b"enc", b"v")
    assert env is not None
    for _ in range(3):
        assert c.seal(b"enc", b"v") is not None
        assert c.open(env, CTX) == b"v"
    assert c.stats()["hits"] == 7
    c.clear()  # what disable_cached_keys() and a retirement do
    assert c.seal(b"enc", b"v") is None
    assert c.open(env, CTX) is None

    k2 = core.DataKey.generate()
    c.put(b"enc", core.EnvelopeSealer(k, key_version=1, context=CTX, dek_id=5))
    assert c.seal(b"enc", b"v") is not None
    c.remove(b"enc")
    assert c.seal(b"enc", b"v") is None
    # A replaced entry is served at once, not the memoized one.
    c.put(b"enc", core.EnvelopeSealer(k, key_version=1, context=CTX, dek_id=5))
    assert c.seal(b"enc", b"v") is not None
    c.put(b"enc", core.EnvelopeSealer(k2, key_version=1, context=CTX, dek_id=6))
    replaced = c.seal(b"enc", b"v")
    assert replaced is not None and core.parse_envelope(replaced).dek_id == 6
    time.sleep(0.25)
    assert c.seal(b"enc", b"v") is None, "a memoized hit must not outlive the TTL"


def test_memoized_hits_stay_per_cache_and_per_thread() -> None:
    a, b = core.DekCache(), core.DekCache()
    ka, kb = core.DataKey.generate(), core.DataKey.generate()
    a.put(b"enc", core.EnvelopeSealer(ka, key_version=1, context=CTX, dek_id=1))
    b.put(b"enc", core.EnvelopeSealer(kb, key_version=1, context=CTX, dek_id=2))
    for _ in range(2):
        env_a, env_b = a.seal(b"enc", b"v"), b.seal(b"enc", b"v")
        assert env_a is not None and env_b is not None
        assert core.parse_envelope(env_a).dek_id == 1 and core.parse_envelope(env_b).dek_id == 2
    # Another thread's memo is cleared with the cache as well.
    done = threading.Event()
    go = threading.Event()
    results: list[bytes | None] = []

    def worker() -> None:
        results.append(a.seal(b"enc", b"v"))
        done.set()
        go.wait(5)
        results.append(a.seal(b"enc", b"v"))

    t = threading.Thread(target=worker)
    t.start()
    assert done.wait(5)
    a.clear()
    go.set()
    t.join(5)
    assert results[0] is not None and results[1] is None


def test_contexts_never_share_a_key() -> None:
    # The cache id is chosen by the service; two ids never return each other's entries.
    c = core.DekCache()
    ka, kb = core.DataKey.generate(), core.DataKey.generate()
    c.put(b"kms|arn|1|" + core.context_digest(CTX), ka)
    other = core.canonical_context({"tenant_id": "t2", "data_class": "pii"})
    c.put(b"kms|arn|1|" + core.context_digest(other), kb)
    a = c.get(b"kms|arn|1|" + core.context_digest(CTX))
    b = c.get(b"kms|arn|1|" + core.context_digest(other))
    assert a is not None and b is not None and a.fingerprint != b.fingerprint


def test_cache_bounded_under_many_contexts() -> None:
    # 10^5 distinct ids stay within the entry bound (LRU).
    c = core.DekCache(max_entries=256)
    k = core.DataKey.generate()
    for i in range(100_000):
        c.put(i.to_bytes(8, "big"), k)
    assert len(c) == 256
    assert c.stats()["evictions"] == 100_000 - 256


def test_evicted_keys_are_released() -> None:
    c = core.DekCache(max_entries=1)
    c.put(b"a", core.DataKey.generate())
    c.put(b"b", core.DataKey.generate())
    gc.collect()
    assert c.get(b"a") is None and len(c) == 1
    c.clear()
    assert len(c) == 0


def test_cache_config_validation() -> None:
    for kwargs in (
        {"max_entries": 0},
        {"ttl_seconds": 0},
        {"ttl_seconds": -1.0},
        {"ttl_seconds": float("nan")},
    ):
        with pytest.raises((InvalidArgumentError, OverflowError)):
            core.DekCache(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "obj_factory",
    [
        core.DataKey.generate,
        core.DekCache,
        lambda: core.EnvelopeSealer(core.DataKey.generate(), key_version=1, context=CTX, dek_id=1),
        lambda: core.DataKey.generate().derive_index_key(b"users.email"),
        lambda: core.AESGCM(b"k" * 32),
    ],
)
def test_secret_objects_cannot_be_pickled(obj_factory: object) -> None:
    obj = obj_factory()  # type: ignore[operator]
    with pytest.raises(TypeError):
        pickle.dumps(obj)
    if isinstance(obj, core.DataKey):
        with pytest.raises(TypeError):
            copy.copy(obj)
        with pytest.raises(TypeError):
            copy.deepcopy(obj)


def test_reprs_never_show_key_bytes() -> None:
    # No key bytes in repr, str, format and __dict__ of key handles.
    raw = bytes(range(32))
    k = core.DataKey.from_bytes(raw)
    sealer = core.EnvelopeSealer(k, key_version=1, context=CTX, dek_id=1)
    idx = k.derive_index_key(b"p")
    cache = core.DekCache()
    cache.put(b"x", k)
    forms = []
    for obj in (k, sealer, idx, cache, core.AESGCM(raw)):
        forms += [repr(obj), str(obj), f"{obj}", repr(getattr(obj, "__dict__", None))]
    text = "\n".join(forms)
    import base64

    for needle in (raw.hex(), base64.b64encode(raw).decode(), repr(raw), raw.hex().upper()):
        assert needle not in text
    assert export_key_bytes(k) == raw  # the one audited export path


def test_errors_carry_no_secrets() -> None:
    # The exception chain never holds key or plaintext bytes.
    raw = os.urandom(32)
    secret = b"TOP-SECRET-PLAINTEXT"
    k = core.DataKey.from_bytes(raw)
    env = core.EnvelopeSealer(k, key_version=1, context=CTX, dek_id=1).seal(secret)
    errors: list[BaseException] = []
    for attempt in (
        lambda: core.open_envelope(core.DataKey.generate(), env, CTX),
        lambda: core.open_envelope(k, env[:-1], CTX),
        lambda: core.DataKey.from_bytes(raw[:31]),
        lambda: core.DataKey.generate(max_messages=1).seal_batch([secret, secret]),
    ):
        with pytest.raises(Exception) as e:
            attempt()
        errors.append(e.value)
    for err in errors:
        chain: list[BaseException | None] = [err, err.__cause__, err.__context__]
        blob = " ".join(repr(x) + " " + repr(getattr(x, "args", ())) for x in chain)
        assert secret.decode() not in blob and raw.hex() not in blob and repr(raw) not in blob


def test_key_length_and_payload_limits() -> None:
    with pytest.raises(InvalidKeyError):
        core.DataKey.from_bytes(b"\x00" * 16)
    assert core.GCM_MAX_PLAINTEXT == 2**36 - 32
    assert PayloadTooLargeError.__mro__[1].__name__ == "GreenlangCryptoError"
