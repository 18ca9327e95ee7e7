"""The encrypting Redis wrappers over an in-memory stand-in for redis-py (no server).

The stand-in keeps what a client was asked to store, so each test can look at the bytes Redis
would hold. ``tests/integration/test_redis.py`` runs the same wrappers against redis-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from greenlang_crypto.exceptions import ConfigurationError, DecryptionError, InvalidArgumentError
from greenlang_crypto.redis import (
    AsyncEncryptedPipeline,
    AsyncEncryptedRedis,
    EncryptedPipeline,
    EncryptedRedis,
    KeyPattern,
    RedisCommandError,
    RedisValueCodec,
)
from greenlang_crypto.service import EncryptionService

SECRET = b"alice@example.com"
PATTERNS = [KeyPattern("session:*", data_class="session", tenant_id="acme")]


class FakeRedis:
    """The redis-py calls the wrappers make, on dicts; ``calls`` names each command sent."""

    def __init__(self, **connection_kwargs: Any) -> None:
        self.strings: dict[bytes, Any] = {}
        self.hashes: dict[bytes, dict[bytes, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.connection_pool = SimpleNamespace(connection_kwargs=connection_kwargs)

    @staticmethod
    def _k(name: Any) -> bytes:
        return name if isinstance(name, bytes) else str(name).encode()

    def _note(self, name: str, **kwargs: Any) -> None:
        self.calls.append((name, kwargs))

    def set(self, name: Any, value: Any, **kwargs: Any) -> Any:
        self._note("set", **kwargs)
        old = self.strings.get(self._k(name))
        if kwargs.get("nx") and old is not None:
            return None
        self.strings[self._k(name)] = value
        return old if kwargs.get("get") else True

    def get(self, name: Any) -> Any:
        self._note("get")
        return self.strings.get(self._k(name))

    def getdel(self, name: Any) -> Any:
        self._note("getdel")
        return self.strings.pop(self._k(name), None)

    def getex(self, name: Any, **kwargs: Any) -> Any:
        self._note("getex", **kwargs)
        return self.strings.get(self._k(name))

    def mset(self, mapping: dict[Any, Any]) -> bool:
        self._note("mset")
        self.strings.update({self._k(k): v for k, v in mapping.items()})
        return True

    def msetnx(self, mapping: dict[Any, Any]) -> bool:
        self._note("msetnx")
        if any(self._k(k) in self.strings for k in mapping):
            return False
        return self.mset(mapping)

    def mget(self, keys: list[Any]) -> list[Any]:
        self._note("mget")
        return [self.strings.get(self._k(k)) for k in keys]

    def hset(
        self,
        name: Any,
        key: Any = None,
        value: Any = None,
        mapping: dict[Any, Any] | None = None,
        items: list[Any] | None = None,
    ) -> int:
        self._note("hset")
        fields = dict(mapping or {})
        if key is not None:
            fields[key] = value
        if items:
            fields.update(zip(items[::2], items[1::2], strict=True))
        h = self.hashes.setdefault(self._k(name), {})
        h.update({self._k(f): v for f, v in fields.items()})
        return len(fields)

    def hsetnx(self, name: Any, key: Any, value: Any) -> bool:
        self._note("hsetnx")
        h = self.hashes.setdefault(self._k(name), {})
        if self._k(key) in h:
            return False
        h[self._k(key)] = value
        return True

    def hget(self, name: Any, key: Any) -> Any:
        self._note("hget")
        return self.hashes.get(self._k(name), {}).get(self._k(key))

    def hmget(self, name: Any, keys: list[Any]) -> list[Any]:
        self._note("hmget")
        h = self.hashes.get(self._k(name), {})
        return [h.get(self._k(k)) for k in keys]

    def hgetall(self, name: Any) -> dict[bytes, Any]:
        self._note("hgetall")
        return dict(self.hashes.get(self._k(name), {}))

    def delete(self, *names: Any) -> int:
        self._note("delete")
        return sum(self.strings.pop(self._k(n), None) is not None for n in names)

    def exists(self, *names: Any) -> int:
        self._note("exists")
        return sum(self._k(n) in self.strings for n in names)

    def close(self) -> None:
        self._note("close")

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self, transaction)


class FakePipeline:
    """Queues calls on a :class:`FakeRedis` and runs them at ``execute``."""

    def __init__(self, client: FakeRedis, transaction: bool) -> None:
        self.client = client
        self.transaction = transaction
        self.queued: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.resets = 0

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any, **kwargs: Any) -> FakePipeline:
            self.queued.append((name, args, kwargs))
            return self

        return queue

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        out: list[Any] = []
        for name, args, kwargs in self.queued:
            try:
                out.append(getattr(self.client, name)(*args, **kwargs))
            except Exception as exc:
                if raise_on_error:
                    raise
                out.append(exc)
        self.queued = []
        return out

    def reset(self) -> None:
        self.resets += 1
        self.queued = []

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptionService]:
    svc = EncryptionService.init_local(tmp_path_factory.mktemp("redis-wrapper"))
    yield svc
    svc.close()


@pytest.fixture
def raw() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def r(raw: FakeRedis, service: EncryptionService) -> EncryptedRedis:
    return EncryptedRedis(raw, service, PATTERNS)


def test_values_under_a_pattern_are_stored_as_envelopes_and_read_back(
    r: EncryptedRedis, raw: FakeRedis
) -> None:
    assert r.set("session:1", SECRET, ex=300) is True
    assert raw.calls[-1] == ("set", {"ex": 300})  # options reach redis-py unchanged
    stored = raw.strings[b"session:1"]
    assert SECRET not in stored and stored[:1] == b"\xfa"
    assert r.get("session:1") == SECRET
    assert r.get("session:missing") is None


def test_other_keys_pass_through_as_given(r: EncryptedRedis, raw: FakeRedis) -> None:
    r.set("plain:1", b"visible")
    assert raw.strings[b"plain:1"] == b"visible"
    assert r.get("plain:1") == b"visible"


def test_set_with_get_returns_the_old_value_decrypted(r: EncryptedRedis) -> None:
    r.set("session:1", b"old")
    assert r.set("session:1", b"new", get=True) == b"old"
    assert r.get("session:1") == b"new"


def test_the_ttl_variants_are_sent_as_set_with_options(r: EncryptedRedis, raw: FakeRedis) -> None:
    r.setex("session:a", 60, b"A")
    r.psetex("session:b", 1500, b"B")
    assert r.setnx("session:c", b"C") is True
    assert r.setnx("session:c", b"again") is False
    assert [c for c in raw.calls if c[0] == "set"] == [
        ("set", {"ex": 60}),
        ("set", {"px": 1500}),
        ("set", {"nx": True}),
        ("set", {"nx": True}),
    ]
    assert (r.get("session:a"), r.get("session:b"), r.get("session:c")) == (b"A", b"B", b"C")


def test_getdel_and_getex_decrypt(r: EncryptedRedis, raw: FakeRedis) -> None:
    r.set("session:1", b"v")
    assert r.getex("session:1", persist=True) == b"v"
    assert raw.calls[-1] == ("getex", {"persist": True})
    assert r.getdel("session:1") == b"v"
    assert b"session:1" not in raw.strings


def test_mset_binds_each_value_to_its_own_key(r: EncryptedRedis, raw: FakeRedis) -> None:
    r.mset({"session:a": b"A", "session:b": b"B", "plain:c": b"C"})
    assert r.mget("session:a", "session:b", "plain:c", "session:none") == [b"A", b"B", b"C", None]
    assert r.mget(["session:b", "session:a"]) == [b"B", b"A"]
    raw.strings[b"session:a"], raw.strings[b"session:b"] = (
        raw.strings[b"session:b"],
        raw.strings[b"session:a"],
    )
    with pytest.raises(DecryptionError):
        r.get("session:a")
    assert r.msetnx({"session:a": b"x"}) is False
    assert r.msetnx({"session:new": b"N"}) is True
    assert r.get("session:new") == b"N"


def test_hash_values_are_bound_to_their_fields(r: EncryptedRedis, raw: FakeRedis) -> None:
    assert r.hset("session:h", "a", b"1") == 1
    r.hset("session:h", mapping={"b": b"2"}, items=["c", b"3"])
    assert r.hsetnx("session:h", "d", b"4") is True
    assert r.hget("session:h", "a") == b"1"
    assert r.hmget("session:h", "a", "b") == [b"1", b"2"]
    assert r.hmget("session:h", ["c", "d", "none"]) == [b"3", b"4", None]
    assert r.hgetall("session:h") == {b"a": b"1", b"b": b"2", b"c": b"3", b"d": b"4"}
    # What is stored is an envelope, not the value (a one-byte value could appear by chance
    # inside random ciphertext, so the check is on the envelope's shape).
    stored = raw.hashes[b"session:h"][b"a"]
    assert stored != b"1" and len(stored) > 16
    h = raw.hashes[b"session:h"]
    h[b"a"], h[b"b"] = h[b"b"], h[b"a"]
    with pytest.raises(DecryptionError):
        r.hget("session:h", "a")


def test_hvals_reads_the_field_names_it_needs_to_check_each_value(
    r: EncryptedRedis, raw: FakeRedis
) -> None:
    r.hset("session:h", mapping={"a": b"1", "b": b"2"})
    raw.calls.clear()
    assert sorted(r.hvals("session:h")) == [b"1", b"2"]
    assert [c[0] for c in raw.calls] == ["hgetall"]


@pytest.mark.parametrize(
    ("items", "message"),
    [(["a"], "alternate field and value"), ([1, b"v"], "field names must be str or bytes")],
)
def test_hset_items_must_be_field_value_pairs(
    r: EncryptedRedis, raw: FakeRedis, items: list[Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        r.hset("session:h", items=items)
    assert raw.hashes == {}


def test_key_only_commands_reach_the_client_and_value_commands_are_refused(
    r: EncryptedRedis, raw: FakeRedis
) -> None:
    r.set("session:1", b"v")
    assert r.exists("session:1") == 1
    assert r.delete("session:1") == 1
    for name in ("append", "lpush", "eval", "hincrby", "getrange", "set_response_callback"):
        with pytest.raises(RedisCommandError, match=repr(name)):
            getattr(r, name)
    assert issubclass(RedisCommandError, InvalidArgumentError)
    with pytest.raises(AttributeError):
        r._private  # noqa: B018


def test_the_raw_client_and_the_codec_are_exposed(r: EncryptedRedis, raw: FakeRedis) -> None:
    assert r.raw is raw
    assert isinstance(r.codec, RedisValueCodec)
    assert r.codec.encrypted("session:x") and not r.codec.encrypted("plain:x")
    assert repr(r).startswith("EncryptedRedis(<")


def test_a_client_that_decodes_responses_or_no_pattern_is_refused(
    service: EncryptionService,
) -> None:
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        EncryptedRedis(FakeRedis(decode_responses=True), service, PATTERNS)
    with pytest.raises(ConfigurationError, match="at least one KeyPattern"):
        EncryptedRedis(FakeRedis(), service, [])


def test_decode_responses_on_the_wrapper_gives_str(service: EncryptionService) -> None:
    r = EncryptedRedis(FakeRedis(), service, PATTERNS, decode_responses=True)
    r.set("session:1", "héllo")
    assert r.get("session:1") == "héllo"


def test_a_pipeline_encrypts_queued_values_and_decrypts_the_results(
    r: EncryptedRedis, raw: FakeRedis
) -> None:
    pipe = r.pipeline(transaction=False)
    assert isinstance(pipe, EncryptedPipeline)
    assert pipe.raw.transaction is False
    assert pipe.set("session:1", b"A").get("session:1").get("plain:1") is pipe
    pipe.exists("session:1")  # a key-only command is queued too
    pipe.hset("session:h", "f", b"F").hget("session:h", "f")
    assert len(pipe) == 6
    assert pipe.execute() == [True, b"A", None, 1, 1, b"F"]
    assert len(pipe) == 0
    assert SECRET not in raw.strings[b"session:1"]


def test_a_pipeline_passes_errors_through_when_asked_to(r: EncryptedRedis) -> None:
    pipe = r.pipeline()
    pipe.set("session:1", b"v")
    pipe.raw.queued.append(("no_such_command", (), {}))
    pipe._decoders.append(lambda x: x)
    results = pipe.execute(raise_on_error=False)
    assert results[0] is True and isinstance(results[1], AttributeError)


def test_a_pipeline_refuses_value_commands_and_resets_on_exit(r: EncryptedRedis) -> None:
    with r.pipeline() as pipe:
        pipe.set("session:1", b"v")
        with pytest.raises(RedisCommandError):
            pipe.append  # noqa: B018
        # Commands that make no sense queued go to the pipeline object itself.
        assert pipe.close == pipe.raw.close
        pipe.close()
        assert len(pipe) == 1 and pipe.raw.closed is True
    assert len(pipe) == 0 and pipe.raw.resets == 1 and pipe.raw.queued == []


class AsyncFakeRedis:
    """redis.asyncio's shape over :class:`FakeRedis`: commands are awaited."""

    def __init__(self, **connection_kwargs: Any) -> None:
        self.sync = FakeRedis(**connection_kwargs)
        self.connection_pool = self.sync.connection_pool

    def __getattr__(self, name: str) -> Any:
        command = getattr(self.sync, name)

        async def run(*args: Any, **kwargs: Any) -> Any:
            return command(*args, **kwargs)

        return run

    def pipeline(self, transaction: bool = True) -> AsyncFakePipeline:
        return AsyncFakePipeline(self.sync, transaction)


class AsyncFakePipeline(FakePipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:  # type: ignore[override]
        return FakePipeline.execute(self, raise_on_error)

    async def reset(self) -> None:  # type: ignore[override]
        FakePipeline.reset(self)


def test_the_asyncio_client_and_pipeline(service: EncryptionService) -> None:
    raw = AsyncFakeRedis()
    r = AsyncEncryptedRedis(raw, service, PATTERNS)
    assert repr(r).startswith("AsyncEncryptedRedis(")

    async def scenario() -> list[Any]:
        assert await r.set("session:1", SECRET) is True
        got = [await r.get("session:1"), await r.mget("session:1", "session:2")]
        async with r.pipeline() as pipe:
            assert isinstance(pipe, AsyncEncryptedPipeline)
            pipe.set("session:2", b"B").get("session:2")
            got.append(await pipe.execute())
            pipe.get("session:2")
        got.append(pipe.raw.resets)
        return got

    assert asyncio.run(scenario()) == [SECRET, [SECRET, None], [True, b"B"], 1]
    assert SECRET not in raw.sync.strings[b"session:1"]
    with pytest.raises(ConfigurationError):
        AsyncEncryptedRedis(AsyncFakeRedis(decode_responses=True), service, PATTERNS)
