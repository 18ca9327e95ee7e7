"""EncryptionService on the embedded local provider: key versions, empty contexts, plaintext
inputs, single-flight cache fills, uncached failures, KMS economy."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto._core import ManualClock
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import (
    ConfigurationError,
    DecryptionError,
    InvalidArgumentError,
    InvalidContextError,
    KeyRetiredError,
    KeyStateError,
    KeyVersionUnavailableError,
    KmsUnavailableError,
    PayloadTooLargeError,
)
from greenlang_crypto.providers.base import GeneratedDataKey, KeyLimits
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

CTX = EncryptionContext(tenant_id="t1", data_class="pii")


class CountingProvider(LocalKeyProvider):
    """The real local provider, counting calls and optionally failing (fault injection)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.generate_calls = 0
        self.decrypt_calls = 0
        self.fail_next = 0
        self.delay = 0.0
        self._count_lock = threading.Lock()

    def generate_data_key(
        self, key_id: str, context: EncryptionContext, limits: KeyLimits
    ) -> GeneratedDataKey:
        with self._count_lock:
            self.generate_calls += 1
            if self.fail_next:
                self.fail_next -= 1
                raise KmsUnavailableError("injected outage")
        time.sleep(self.delay)
        return super().generate_data_key(key_id, context, limits)

    def decrypt_data_key(self, *a: Any, **kw: Any) -> Any:
        with self._count_lock:
            self.decrypt_calls += 1
        return super().decrypt_data_key(*a, **kw)


def make(
    tmp_path: Path, *, clock: ManualClock | None = None, **cfg: Any
) -> tuple[EncryptionService, CountingProvider]:
    """A service on the counting provider; with ``clock``, its caches and keyring read it."""
    provider = CountingProvider(tmp_path)
    if not provider.versions():
        provider.create_master_key()
    config = EncryptionServiceConfig(data_dir=tmp_path, **cfg)
    if clock is None:
        return EncryptionService(config, provider=provider), provider
    return EncryptionService(config, provider=provider, clock=clock), provider


def test_round_trip_stored_and_inline(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    for ref in ("stored", "inline"):
        env = svc.encrypt(b"secret", CTX, key_reference=ref)
        assert parse_envelope(env).kind == ref
        assert svc.decrypt(env, CTX) == b"secret"
    assert svc.decrypt(svc.encrypt(b"x", {"tenant_id": "t1", "data_class": "pii"}), CTX) == b"x"


def test_compact_pii_envelope(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    # Key-committing format v2: 60 bytes of v1 plus the 32-byte commitment, within 100.
    assert len(svc.encrypt(b"0123456789abcdef", CTX)) == 92


def test_wrong_context_fails_opaquely(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    env = svc.encrypt(b"secret", CTX)
    for other in (
        EncryptionContext("t2", "pii"),
        EncryptionContext("t1", "PII"),
        EncryptionContext("t1", "pii", {"purpose": "x"}),
    ):
        with pytest.raises(DecryptionError) as e:
            svc.decrypt(env, other)
        assert str(e.value) == "decryption failed"
    # A fresh service (cold cache) fails at the wrapped-DEK level too.
    svc2, _ = make(tmp_path)
    with pytest.raises(DecryptionError):
        svc2.decrypt(env, EncryptionContext("t2", "pii"))


def test_associated_data_binds_location(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    env = svc.encrypt(b"v", CTX, associated_data=b"users.email|pk=1")
    assert svc.decrypt(env, CTX, associated_data=b"users.email|pk=1") == b"v"
    with pytest.raises(DecryptionError):
        svc.decrypt(env, CTX, associated_data=b"users.email|pk=2")


def test_rotation_dual_key_window_and_retire(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    old = svc.encrypt(b"v1 data", CTX)
    result = svc.rotate()
    assert result.new_version == 2 == svc.primary_version
    new = svc.encrypt(b"v2 data", CTX)
    assert parse_envelope(new).key_version == 2  # new writes use only the primary
    assert svc.decrypt(old, CTX) == b"v1 data" and svc.decrypt(new, CTX) == b"v2 data"
    moved = svc.reencrypt(old, CTX)
    assert parse_envelope(moved).key_version == 2
    with pytest.raises(KeyStateError):
        svc.retire_versions_below(2)  # stored DEKs of v1 still exist
    svc.retire_versions_below(2, delete_stored_deks=True)
    with pytest.raises(KeyRetiredError):  # a retired version is refused
        svc.decrypt(old, CTX)
    assert svc.decrypt(moved, CTX) == b"v1 data"
    with pytest.raises(KeyStateError):
        svc.retire_versions_below(3)


def test_missing_key_version_is_named(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    env = bytearray(svc.encrypt(b"v", CTX))
    env[4:8] = (7).to_bytes(4, "big")
    with pytest.raises(KeyVersionUnavailableError) as e:
        svc.decrypt(bytes(env), CTX)
    assert e.value.key_version == 7 and "7" in str(e.value)


def test_other_process_sees_rotation(tmp_path: Path) -> None:
    a, _ = make(tmp_path)
    b, _ = make(tmp_path)
    a.rotate()
    env = a.encrypt(b"from a", CTX)
    assert b.decrypt(env, CTX) == b"from a"


@pytest.mark.parametrize("value", [None, 12, "text", ["x"], {"a": 1}])
def test_wrong_plaintext_types(tmp_path: Path, value: Any) -> None:
    svc, provider = make(tmp_path)
    with pytest.raises(TypeError):
        svc.encrypt(value, CTX)
    assert provider.generate_calls == 0


def test_str_helpers_and_lone_surrogate(tmp_path: Path) -> None:
    svc, provider = make(tmp_path)
    for text in [
        "",
        "emoji \U0001f600",
        "\u05d0\u05d1 rtl",
        "nul\x00inside",
        "cafe\u0301",
        "caf\u00e9",
    ]:
        assert svc.decrypt_str(svc.encrypt_str(text, CTX), CTX) == text
    calls = provider.generate_calls
    with pytest.raises(InvalidArgumentError):
        svc.encrypt_str("bad \ud800", CTX)
    assert provider.generate_calls == calls


def test_empty_stays_distinct(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    env = svc.encrypt(b"", CTX)
    assert svc.decrypt(env, CTX) == b""


def test_payload_limit_checked_before_kms(tmp_path: Path) -> None:
    svc, provider = make(tmp_path, max_plaintext_bytes=1024)
    assert svc.decrypt(svc.encrypt(b"x" * 1024, CTX), CTX) == b"x" * 1024
    calls = provider.generate_calls
    svc._enc_cache.clear()
    with pytest.raises(PayloadTooLargeError):
        svc.encrypt(b"x" * 1025, CTX)
    assert provider.generate_calls == calls


def test_mutable_input_not_aliased(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    buf = bytearray(b"original")
    env = svc.encrypt(buf, CTX)
    buf[:] = b"changed!"
    assert svc.decrypt(env, CTX) == b"original"


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {},
        {"tenant_id": "t"},
        {"tenant_id": "", "data_class": "x"},
        {"tenant_id": 1, "data_class": "x"},
    ],
)
def test_bad_contexts(tmp_path: Path, bad: Any) -> None:
    svc, _ = make(tmp_path)
    with pytest.raises(InvalidContextError):
        svc.encrypt(b"x", bad)


def test_single_flight_cold_cache(tmp_path: Path) -> None:
    # 64 threads on a cold cache make exactly one provider call.
    svc, provider = make(tmp_path)
    provider.delay = 0.05
    barrier = threading.Barrier(64)

    def work(_: int) -> bytes:
        barrier.wait()
        return svc.encrypt(b"v", CTX)

    with ThreadPoolExecutor(max_workers=64) as pool:
        envs = list(pool.map(work, range(64)))
    assert provider.generate_calls == 1
    assert {parse_envelope(e).dek_id for e in envs} == {parse_envelope(envs[0]).dek_id}


def test_single_flight_asyncio(tmp_path: Path) -> None:
    svc, provider = make(tmp_path)
    provider.delay = 0.02

    async def run() -> list[bytes]:
        return await asyncio.gather(*(svc.encrypt_async(b"v", CTX) for _ in range(200)))

    envs = asyncio.run(run())
    assert provider.generate_calls == 1
    assert asyncio.run(svc.decrypt_async(envs[0], CTX)) == b"v"


def test_failures_are_not_cached(tmp_path: Path) -> None:
    # At the service, a provider failure raises typed, writes nothing, and the next
    # call tries again.
    svc, provider = make(tmp_path)
    provider.fail_next = 1
    with pytest.raises(KmsUnavailableError):
        svc.encrypt(b"v", CTX)
    assert svc.store.count_deks_by_version() == {}
    assert svc.decrypt(svc.encrypt(b"v", CTX), CTX) == b"v"
    assert provider.generate_calls == 2


def test_kms_economy(tmp_path: Path) -> None:
    svc, provider = make(tmp_path)
    envs = [svc.encrypt(b"value %d" % i, CTX) for i in range(10_000)]
    assert provider.generate_calls == 1
    cold, _ = make(tmp_path)
    cold_provider = cold.provider
    assert isinstance(cold_provider, CountingProvider)
    for i, e in enumerate(envs):
        assert cold.decrypt(e, CTX) == b"value %d" % i
    assert cold_provider.decrypt_calls == 1
    stats = cold.status().cache["decrypt"]
    assert stats["hits"] / (stats["hits"] + stats["misses"]) >= 0.99


def test_usage_limit_rolls_to_new_dek(tmp_path: Path) -> None:
    svc, provider = make(tmp_path, max_messages_per_dek=100)
    envs = [svc.encrypt(b"v", CTX) for _ in range(250)]
    assert provider.generate_calls == 3
    assert len({parse_envelope(e).dek_id for e in envs}) == 3
    assert all(svc.decrypt(e, CTX) == b"v" for e in envs)


def test_ttl_refresh(tmp_path: Path) -> None:
    # Refresh-ahead: a DEK older than ttl * fraction is replaced before its TTL runs out.
    clock = ManualClock()
    svc, provider = make(tmp_path, clock=clock, cache_ttl_seconds=200, refresh_ahead_fraction=0.5)
    svc.encrypt(b"v", CTX)
    clock.advance(99.0)
    svc.encrypt(b"v", CTX)
    assert provider.generate_calls == 1
    clock.advance(1.0)
    svc.encrypt(b"v", CTX)
    assert provider.generate_calls == 2
    # The new DEK starts its own age: the next refresh is another 100 s away.
    clock.advance(99.0)
    svc.encrypt(b"v", CTX)
    assert provider.generate_calls == 2


def test_batch(tmp_path: Path) -> None:
    svc, provider = make(tmp_path)
    envs = svc.encrypt_batch([b"a", b"b", b"c"], CTX, associated_data=[b"1", b"2", b"3"])
    assert svc.decrypt_batch(envs, CTX, associated_data=[b"1", b"2", b"3"]) == [b"a", b"b", b"c"]
    assert provider.generate_calls == 1


def test_rewrap_keeps_data_readable(tmp_path: Path) -> None:
    svc, provider = make(tmp_path)
    env = svc.encrypt(b"data", CTX)
    new_key = provider.create_master_key()
    assert svc.rewrap(new_key) == 1
    cold, _ = make(tmp_path)
    assert cold.decrypt(env, CTX) == b"data"
    assert {r.wrapping_key_id for b in cold.store.iter_deks() for r in b} == {new_key}


def test_config_validation(tmp_path: Path) -> None:
    for bad in (
        {"provider": "vault"},
        {"cache_ttl_seconds": 301},
        {"max_messages_per_dek": 2**32 + 1},
        {"provider": "aws-kms"},
        {"key_reference": "x"},
        {"key_store_url": "mysql://x"},
    ):
        with pytest.raises(ConfigurationError):
            EncryptionServiceConfig(data_dir=tmp_path, **bad)
    with pytest.raises(ConfigurationError):
        EncryptionServiceConfig.from_mapping({"nope": 1})
    cfg = EncryptionServiceConfig.from_env(
        {"GLC_CACHE_TTL_SECONDS": "60", "GLC_DATA_DIR": str(tmp_path)}
    )
    assert cfg.cache_ttl_seconds == 60
    toml = tmp_path / "c.toml"
    toml.write_text('[greenlang_crypto]\nprovider = "local"\ncache_max_entries = 10\n')
    assert EncryptionServiceConfig.from_toml(toml).cache_max_entries == 10


def test_no_master_key_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        EncryptionService(EncryptionServiceConfig(data_dir=tmp_path / "empty"))


def test_master_key_file_mode(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path)
    provider.create_master_key()
    path = tmp_path / "master-keys" / "master-v1.key"
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(ConfigurationError):
        LocalKeyProvider(tmp_path).generate_data_key("local:master-v1", CTX, KeyLimits())


def test_repr_has_no_secrets(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    text = repr(svc) + repr(svc.provider) + repr(svc.config) + repr(CTX)
    for path in (tmp_path / "master-keys").iterdir():
        raw = path.read_bytes()
        assert raw.hex() not in text and repr(raw) not in text


def test_outage_cached_keys_keep_working_until_ttl(tmp_path: Path) -> None:
    # The outage policy: during a provider outage, envelopes whose DEK is cached still
    # decrypt; a cache miss fails with a typed error; after the TTL everything fails closed.
    clock = ManualClock()
    svc, provider = make(tmp_path, clock=clock, cache_ttl_seconds=60)
    warm = svc.encrypt(b"warm", CTX)
    other, _ = make(tmp_path)
    cold = other.encrypt(b"cold", EncryptionContext("t9", "pii"))

    def outage(*_: Any, **__: Any) -> Any:
        raise KmsUnavailableError("injected outage")

    provider.decrypt_data_key = outage  # type: ignore[method-assign]
    provider.fail_next = 10**6
    assert svc.decrypt(warm, CTX) == b"warm"
    assert svc.encrypt(b"more", CTX)
    with pytest.raises(KmsUnavailableError):
        svc.decrypt(cold, EncryptionContext("t9", "pii"))
    clock.advance(59.0)
    assert svc.decrypt(warm, CTX) == b"warm"
    clock.advance(1.0)
    with pytest.raises(KmsUnavailableError):
        svc.decrypt(warm, CTX)
    with pytest.raises(KmsUnavailableError):
        svc.encrypt(b"after ttl", CTX)


def test_rotate_kms_key_needs_provider_support(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    with pytest.raises(KeyStateError):
        svc.rotate(rotate_kms_key=True)


def test_blind_index_keys_versions_and_separation(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    email = svc.blind_index_key("users.email")
    phone = svc.blind_index_key("users.phone")
    assert email.compute(b"a@b.com") != phone.compute(b"a@b.com")
    assert svc.blind_index_key("users.email").compute(b"a@b.com") == email.compute(b"a@b.com")
    cold, _ = make(tmp_path)  # another process derives the same index
    assert cold.blind_index_key("users.email").compute(b"a@b.com") == email.compute(b"a@b.com")
    v2 = svc.rotate_index_key()
    assert svc.active_index_versions() == [v2, 1]
    new = svc.blind_index_key("users.email")
    assert new.compute(b"a@b.com") != email.compute(b"a@b.com")
    assert svc.blind_index_key("users.email", version=1).compute(b"a@b.com") == email.compute(
        b"a@b.com"
    )
    with pytest.raises(KeyStateError):
        svc.retire_index_key(v2)
    svc.retire_index_key(1)
    assert svc.active_index_versions() == [v2]
    with pytest.raises(KeyStateError):
        svc.blind_index_key("users.email", version=1)
    new_master = svc.provider.create_master_key()  # type: ignore[attr-defined]
    svc.rewrap(new_master)
    colder, _ = make(tmp_path)
    assert colder.blind_index_key("users.email").compute(b"x") == new.compute(b"x")


def test_use_counts_reach_the_key_store(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    for _ in range(25):
        svc.encrypt(b"12345", CTX)
    svc.flush_usage()
    assert svc.store.usage_by_version() == {1: (1, 25, 125)}
    svc.close()
    cold, _ = make(tmp_path)
    assert cold.status().usage_by_version[1] == (1, 25, 125)
