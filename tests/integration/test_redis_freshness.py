"""Optional freshness of encrypted Redis values (``KeyPattern(max_age=...)``), against a real
redis-server: a PERSIST or a replayed old envelope cannot keep a value alive past its bound."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from greenlang_crypto import _redis_values
from greenlang_crypto.exceptions import ConfigurationError, DecryptionError
from greenlang_crypto.redis import EncryptedRedis, KeyPattern
from greenlang_crypto.service import EncryptionService

redis = pytest.importorskip("redis")
URL = os.environ.get("GLC_REDIS_URL")
pytestmark = pytest.mark.skipif(not URL, reason="GLC_REDIS_URL not set; run scripts/services.sh")

FRESH = KeyPattern("otp:*", data_class="otp", tenant_id="acme", max_age=60)
PLAIN = KeyPattern("otp:*", data_class="otp", tenant_id="acme")


class _Clock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(_redis_values, "_now_ms", c)
    return c


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptionService]:
    svc = EncryptionService.init_local(tmp_path_factory.mktemp("redis-fresh-keys"))
    yield svc
    svc.close()


@pytest.fixture
def raw() -> Iterator[Any]:
    # Database 5 belongs to this module; every test starts from an empty one.
    client = redis.Redis.from_url(URL, db=5)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_persisted_value_reads_as_missing_past_its_bound(
    raw: Any, service: EncryptionService, clock: _Clock
) -> None:
    r = EncryptedRedis(raw, service, [FRESH])
    r.set("otp:1", b"123456", ex=30)
    r.hset("otp:h", "code", b"654321")
    assert r.get("otp:1") == b"123456" and r.hget("otp:h", "code") == b"654321"
    raw.persist("otp:1")  # an attacker (or a mistake) removes the TTL
    clock.ms += 59_000
    assert r.get("otp:1") == b"123456"
    clock.ms += 2_000
    assert raw.get("otp:1") is not None  # still in Redis...
    assert r.get("otp:1") is None  # ...but past its bound for every reader
    assert r.hget("otp:h", "code") is None
    assert r.mget(["otp:1"]) == [None]


def test_a_replayed_old_envelope_expires_with_its_own_write_time(
    raw: Any, service: EncryptionService, clock: _Clock
) -> None:
    r = EncryptedRedis(raw, service, [FRESH])
    r.set("otp:1", b"old")
    captured = raw.get("otp:1")
    clock.ms += 120_000
    r.set("otp:1", b"new")
    raw.set("otp:1", captured)  # replay the captured envelope
    assert r.get("otp:1") is None
    # Its write time is inside the envelope: editing any byte to refresh it fails the tag.
    forged = bytearray(captured)
    forged[-20] ^= 1
    raw.set("otp:1", bytes(forged))
    with pytest.raises(DecryptionError):
        r.get("otp:1")


def test_timed_and_untimed_values_never_open_as_each_other(
    raw: Any, service: EncryptionService, clock: _Clock
) -> None:
    timed, untimed = EncryptedRedis(raw, service, [FRESH]), EncryptedRedis(raw, service, [PLAIN])
    untimed.set("otp:a", b"123456")
    timed.set("otp:b", b"123456")
    with pytest.raises(DecryptionError):
        timed.get("otp:a")  # would otherwise read 8 value bytes as a time
    with pytest.raises(DecryptionError):
        untimed.get("otp:b")  # would otherwise return the time as part of the value
    assert untimed.get("otp:a") == timed.get("otp:b") == b"123456"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "60"])
def test_max_age_is_validated(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        KeyPattern("otp:*", data_class="otp", tenant_id="acme", max_age=bad)  # type: ignore[arg-type]
