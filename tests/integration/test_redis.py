"""Encrypted Redis values against a real redis-server (started by the test command)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto.exceptions import (
    ConfigurationError,
    DecryptionError,
    InvalidArgumentError,
)
from greenlang_crypto.redis import (
    AsyncEncryptedRedis,
    EncryptedRedis,
    KeyPattern,
    RedisCommandError,
)
from greenlang_crypto.service import EncryptionService

redis = pytest.importorskip("redis")
URL = os.environ.get("GLC_REDIS_URL")
pytestmark = pytest.mark.skipif(not URL, reason="GLC_REDIS_URL not set; run scripts/services.sh")

SECRET = b"alice@example.com|4111-1111-1111-1111"
PATTERNS = [
    KeyPattern("session:*", data_class="session", tenant_id="acme"),
    KeyPattern("profile:*", data_class="pii", tenant_id=lambda key: key.split(":")[1]),
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptionService]:
    svc = EncryptionService.init_local(tmp_path_factory.mktemp("redis-keys"))
    yield svc
    svc.close()


@pytest.fixture
def raw() -> Iterator[Any]:
    # Database 3 belongs to this module; every test starts from an empty one.
    client = redis.Redis.from_url(URL, db=3)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def r(raw: Any, service: EncryptionService) -> EncryptedRedis:
    return EncryptedRedis(raw, service, PATTERNS)


def test_string_commands_round_trip_and_store_only_envelopes(r: EncryptedRedis, raw: Any) -> None:
    assert r.set("session:1", SECRET, ex=300) is True
    assert r.get("session:1") == SECRET
    stored = raw.get("session:1")
    assert stored != SECRET and SECRET not in stored and stored[:1] == b"\xfa"
    assert 0 < raw.ttl("session:1") <= 300  # the TTL is Redis's own, untouched
    assert r.set("session:1", "new", get=True) == SECRET  # SET ... GET returns the old value
    assert r.get("session:1") == b"new"
    r.setex("session:2", 60, 42)
    assert r.get("session:2") == b"42" and 0 < raw.ttl("session:2") <= 60
    r.psetex("session:3", 60_000, 1.5)
    assert r.getex("session:3", persist=True) == b"1.5" and raw.ttl("session:3") == -1
    assert r.setnx("session:3", b"x") is False
    assert r.getdel("session:3") == b"1.5" and raw.exists("session:3") == 0
    assert r.get("session:missing") is None


def test_mset_mget_bind_each_value_to_its_own_key(r: EncryptedRedis, raw: Any) -> None:
    r.mset({"session:a": b"A", "profile:globex:7": b"G", "plain:x": b"visible"})
    assert r.mget("session:a", "profile:globex:7", "plain:x", "session:none") == [
        b"A",
        b"G",
        b"visible",
        None,
    ]
    assert raw.get("plain:x") == b"visible"  # keys outside every pattern pass through
    assert raw.get("session:a") != b"A"
    assert r.msetnx({"session:a": b"again"}) is False


def test_hashes_bind_values_to_key_and_field(r: EncryptedRedis, raw: Any) -> None:
    r.hset("profile:acme:1", "email", "alice@example.com")
    r.hset("profile:acme:1", mapping={"phone": "+1 555 0100", "ip": "203.0.113.7"})
    r.hset("profile:acme:1", items=["city", "Lisbon"])
    assert r.hget("profile:acme:1", "email") == b"alice@example.com"
    assert r.hmget("profile:acme:1", ["phone", "nope"]) == [b"+1 555 0100", None]
    assert r.hgetall("profile:acme:1") == {
        b"email": b"alice@example.com",
        b"phone": b"+1 555 0100",
        b"ip": b"203.0.113.7",
        b"city": b"Lisbon",
    }
    assert sorted(r.hvals("profile:acme:1")) == sorted(
        [b"alice@example.com", b"+1 555 0100", b"203.0.113.7", b"Lisbon"]
    )
    assert r.hsetnx("profile:acme:1", "email", "x") == 0
    # A value swapped into another field of the same hash does not decrypt.
    raw.hset("profile:acme:1", "phone", raw.hget("profile:acme:1", "email"))
    with pytest.raises(DecryptionError):
        r.hget("profile:acme:1", "phone")
    with pytest.raises(InvalidArgumentError):
        r.hset("profile:acme:1", items=["odd"])


def test_a_value_moved_to_another_key_fails_to_decrypt(r: EncryptedRedis, raw: Any) -> None:
    r.set("session:victim", SECRET)
    raw.set("session:attacker", raw.get("session:victim"))
    with pytest.raises(DecryptionError):
        r.get("session:attacker")
    raw.rename("session:victim", "session:renamed")
    with pytest.raises(DecryptionError):
        r.get("session:renamed")
    # A string value copied into a hash field, and another tenant's key, fail the same way.
    r.set("profile:acme:9", SECRET)
    raw.hset("profile:acme:10", "f", raw.get("profile:acme:9"))
    with pytest.raises(DecryptionError):
        r.hget("profile:acme:10", "f")
    raw.set("profile:globex:9", raw.get("profile:acme:9"))
    with pytest.raises(DecryptionError):
        r.get("profile:globex:9")


def test_plaintext_under_an_encrypted_pattern_is_refused(r: EncryptedRedis, raw: Any) -> None:
    raw.set("session:legacy", b"not an envelope")
    with pytest.raises(DecryptionError):
        r.get("session:legacy")


def test_pipeline_encrypts_and_decrypts(r: EncryptedRedis, raw: Any) -> None:
    with r.pipeline() as pipe:
        pipe.set("session:p1", b"one", ex=100).hset("profile:acme:p", "k", "v")
        pipe.get("session:p1").hget("profile:acme:p", "k").expire("session:p1", 50)
        pipe.ttl("session:p1").get("plain:none")
        assert len(pipe) == 7
        results = pipe.execute()
    assert results[:4] == [True, 1, b"one", b"v"]
    assert results[4] is True and 0 < results[5] <= 50 and results[6] is None
    assert raw.get("session:p1") != b"one"


def test_value_commands_the_wrapper_cannot_encrypt_are_refused(r: EncryptedRedis) -> None:
    for command in ("append", "lpush", "setrange", "eval", "hscan"):
        with pytest.raises(RedisCommandError):
            getattr(r, command)
    with pytest.raises(RedisCommandError):
        _ = r.pipeline().lpush
    assert r.delete("session:nothing") == 0  # key-only commands pass through
    assert r.raw is not None and r.codec.encrypted("session:x")
    assert not r.codec.encrypted("other")


def test_bad_values_and_configuration(service: EncryptionService) -> None:
    client = redis.Redis.from_url(URL, db=3)
    with pytest.raises(ConfigurationError):
        EncryptedRedis(redis.Redis.from_url(URL, db=3, decode_responses=True), service, PATTERNS)
    with pytest.raises(ConfigurationError):
        EncryptedRedis(client, service, [])
    r = EncryptedRedis(client, service, PATTERNS, decode_responses=True)
    for bad in (None, True, object()):
        with pytest.raises(TypeError):
            r.set("session:bad", bad)
    with pytest.raises(InvalidArgumentError):
        r.set(123, b"x")  # type: ignore[arg-type]
    r.set("session:text", "héllo")
    assert r.get("session:text") == "héllo"
    r.hset("profile:acme:t", "name", "Zoë")
    assert r.hgetall("profile:acme:t") == {"name": "Zoë"}
    client.flushdb()
    client.close()


def test_scan_and_dump_of_the_whole_database_hold_no_plaintext(r: EncryptedRedis, raw: Any) -> None:
    secrets = [f"secret-{uuid.uuid4()}".encode() for _ in range(20)]
    for i, s in enumerate(secrets):
        r.set(f"session:{i}", s, ex=600)
        r.hset(f"profile:acme:{i}", "email", s)
    r.mset({f"session:m{i}": s for i, s in enumerate(secrets)})
    dumped = b"".join(raw.dump(k) for k in raw.scan_iter(count=1000))
    assert dumped
    for s in secrets:
        assert s not in dumped


def test_asyncio_client_and_pipeline(service: EncryptionService, tmp_path: Path) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(URL, db=3)
        r = AsyncEncryptedRedis(client, service, PATTERNS)
        await client.flushdb()
        assert await r.set("session:a1", SECRET, px=10_000) is True
        assert await r.get("session:a1") == SECRET
        await r.hset("profile:acme:a", mapping={"email": "a@example.com"})
        assert await r.hgetall("profile:acme:a") == {b"email": b"a@example.com"}
        await r.mset({"session:a2": b"two"})
        assert await r.mget(["session:a1", "session:a2"]) == [SECRET, b"two"]
        async with r.pipeline() as pipe:
            pipe.set("session:a3", b"three").get("session:a3").ttl("session:a1")
            result = await pipe.execute()
        assert result[:2] == [True, b"three"] and 0 < result[2] <= 10
        await client.set("session:moved", await client.get("session:a1"))
        with pytest.raises(DecryptionError):
            await r.get("session:moved")
        assert SECRET not in (await client.get("session:a1"))
        await client.flushdb()
        await client.aclose()

    asyncio.run(main())
