"""Encrypted values in Redis for redis-py, sync and asyncio (needs the ``redis`` extra).

The values of keys that match a configured pattern are encrypted by the
:class:`~greenlang_crypto.service.EncryptionService` before they leave the process and decrypted
when they come back; every other key passes through untouched. Each pattern names the data class
(and the tenant) of its values, which become the encryption context.

What Redis sees, and what it does not:

- **Key names and hash field names are not encrypted.** They stay usable for lookups, ``SCAN``,
  expiry and eviction, so they must not hold secrets themselves (``session:<random id>``, not
  ``user:alice@example.com``).
- Values are envelopes bound to their key name (and, in a hash, to their field) as associated
  data: a value copied, renamed or moved to another key or field fails to decrypt with the
  opaque :class:`~greenlang_crypto.exceptions.DecryptionError`. So does a plaintext value found
  under an encrypted pattern: nothing unauthenticated is ever returned.
- TTLs and every option of ``SET`` pass through unchanged.

Example::

    import redis
    from greenlang_crypto.redis import EncryptedRedis, KeyPattern

    r = EncryptedRedis(
        redis.Redis(),
        service,
        [KeyPattern("session:*", data_class="session", tenant_id="acme"),
         KeyPattern("profile:*", data_class="pii", tenant_id=lambda key: key.split(":")[1])],
    )
    r.set("session:4f1c", b"...", ex=900)
    r.get("session:4f1c")

Only commands whose values this module knows how to encrypt are offered (``SET``, ``GET``,
``GETDEL``, ``GETEX``, ``SETEX``, ``PSETEX``, ``SETNX``, ``MSET``, ``MSETNX``, ``MGET``,
``HSET``, ``HSETNX``, ``HGET``, ``HMGET``, ``HGETALL``, ``HVALS``), plus commands that touch
key names only (``DELETE``, ``EXPIRE``, ``TTL``, ``SCAN``, ...). Anything else raises
:class:`RedisCommandError` rather than letting a plaintext value slip past the encryption;
``.raw`` is the unwrapped client for keys that are not encrypted.

This module sends commands; what happens to the values (pattern matching, binding to key and
field, sealing and opening) is shared by every client and lives in ``_redis_values``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from greenlang_crypto._redis_values import KeyPattern, KeyT, RedisValueCodec, check_client
from greenlang_crypto.exceptions import InvalidArgumentError

if TYPE_CHECKING:
    from greenlang_crypto.service import EncryptionService

__all__ = [
    "AsyncEncryptedPipeline",
    "AsyncEncryptedRedis",
    "EncryptedPipeline",
    "EncryptedRedis",
    "KeyPattern",
    "RedisCommandError",
    "RedisValueCodec",
]

_C = TypeVar("_C")

#: Commands that read or change key names, expiry or membership only, never a value's bytes.
_KEY_ONLY_COMMANDS = frozenset(
    {
        "delete",
        "unlink",
        "exists",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "expiretime",
        "pexpiretime",
        "persist",
        "ttl",
        "pttl",
        "type",
        "touch",
        "scan",
        "scan_iter",
        "keys",
        "rename",
        "renamenx",
        "dump",
        "hdel",
        "hexists",
        "hlen",
        "hkeys",
        "hstrlen",
        "strlen",
        "dbsize",
        "ping",
        "flushdb",
        "close",
        "aclose",
    }
)


class RedisCommandError(InvalidArgumentError):
    """A Redis command that the encrypting wrapper does not offer (it could store plaintext)."""


def _same(value: Any) -> Any:
    return value


def _names(first: KeyT | Iterable[KeyT], more: Sequence[KeyT]) -> list[KeyT]:
    """Key or field names given redis-py's way: one or an iterable, then any more."""
    return [first, *more] if isinstance(first, str | bytes) else [*first, *more]


class _Commands(Generic[_C]):
    """The value commands, written once; subclasses say how a command runs.

    ``_run(name, args, kwargs, decode)`` sends one command to the wrapped client and applies
    ``decode`` to its answer: at once (client), later (pipeline), or when awaited (asyncio).
    """

    _codec: RedisValueCodec
    _target: Any

    def _run(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        decode: Callable[[Any], Any],
    ) -> _C:
        raise NotImplementedError

    @property
    def codec(self) -> RedisValueCodec:
        """The codec (to encrypt or decrypt values by hand, for example in Lua arguments)."""
        return self._codec

    @property
    def raw(self) -> Any:
        """The wrapped redis-py object, for keys whose values are not encrypted."""
        return self._target

    # -- strings ----------------------------------------------------------------------------

    def set(self, name: KeyT, value: object, **kwargs: Any) -> _C:
        """``SET``, with every option (``ex``, ``px``, ``nx``, ``xx``, ``keepttl``, ``get``...)."""
        decode = (lambda raw: self._codec.decode(name, raw)) if kwargs.get("get") else _same
        return self._run("set", (name, self._codec.encode(name, value)), kwargs, decode)

    def setex(self, name: KeyT, time: Any, value: object) -> _C:
        """``SETEX``: set with a TTL in seconds (sent as ``SET ... EX``)."""
        return self._run("set", (name, self._codec.encode(name, value)), {"ex": time}, _same)

    def psetex(self, name: KeyT, time_ms: Any, value: object) -> _C:
        """``PSETEX``: set with a TTL in milliseconds (sent as ``SET ... PX``)."""
        return self._run("set", (name, self._codec.encode(name, value)), {"px": time_ms}, _same)

    def setnx(self, name: KeyT, value: object) -> _C:
        """``SETNX``: set if the key does not exist (sent as ``SET ... NX``); True if set."""
        return self._run("set", (name, self._codec.encode(name, value)), {"nx": True}, bool)

    def get(self, name: KeyT) -> _C:
        """``GET``: the decrypted value, or None."""
        return self._run("get", (name,), {}, lambda raw: self._codec.decode(name, raw))

    def getdel(self, name: KeyT) -> _C:
        """``GETDEL``: the decrypted value, and the key deleted."""
        return self._run("getdel", (name,), {}, lambda raw: self._codec.decode(name, raw))

    def getex(self, name: KeyT, **kwargs: Any) -> _C:
        """``GETEX``: the decrypted value, with the expiry options of redis-py."""
        return self._run("getex", (name,), kwargs, lambda raw: self._codec.decode(name, raw))

    def mset(self, mapping: Mapping[KeyT, object]) -> _C:
        """``MSET``: each value encrypted for its own key."""
        return self._run("mset", (self._encode_each(mapping),), {}, _same)

    def msetnx(self, mapping: Mapping[KeyT, object]) -> _C:
        """``MSETNX``: like ``MSET``, only if none of the keys exists."""
        return self._run("msetnx", (self._encode_each(mapping),), {}, _same)

    def _encode_each(self, mapping: Mapping[KeyT, object]) -> dict[KeyT, object]:
        return {k: self._codec.encode(k, v) for k, v in mapping.items()}

    def mget(self, keys: KeyT | Iterable[KeyT], *args: KeyT) -> _C:
        """``MGET``: each value decrypted for its own key."""
        names = _names(keys, args)

        def decode(raw: list[Any]) -> list[Any]:
            return [self._codec.decode(k, v) for k, v in zip(names, raw, strict=True)]

        return self._run("mget", (names,), {}, decode)

    # -- hashes -----------------------------------------------------------------------------

    def hset(
        self,
        name: KeyT,
        key: KeyT | None = None,
        value: object = None,
        mapping: Mapping[KeyT, object] | None = None,
        items: Sequence[object] | None = None,
    ) -> _C:
        """``HSET``: each field's value encrypted and bound to its key and field."""
        encoded_items: list[object] | None = None
        if items is not None:
            if len(items) % 2:
                raise InvalidArgumentError("items must alternate field and value")
            encoded_items = []
            for field, item in zip(items[::2], items[1::2], strict=True):
                if not isinstance(field, str | bytes):
                    raise InvalidArgumentError("hash field names must be str or bytes")
                encoded_items += [field, self._codec.encode(name, item, field)]
        kwargs = {
            "key": key,
            "value": None if key is None else self._codec.encode(name, value, key),
            "mapping": self._codec.encode_mapping(name, mapping),
            "items": encoded_items,
        }
        return self._run("hset", (name,), kwargs, _same)

    def hsetnx(self, name: KeyT, key: KeyT, value: object) -> _C:
        """``HSETNX``: set a field if it does not exist."""
        return self._run("hsetnx", (name, key, self._codec.encode(name, value, key)), {}, _same)

    def hget(self, name: KeyT, key: KeyT) -> _C:
        """``HGET``: one field, decrypted."""
        return self._run("hget", (name, key), {}, lambda raw: self._codec.decode(name, raw, key))

    def hmget(self, name: KeyT, keys: KeyT | Iterable[KeyT], *args: KeyT) -> _C:
        """``HMGET``: several fields, decrypted."""
        fields = _names(keys, args)

        def decode(raw: list[Any]) -> list[Any]:
            return [self._codec.decode(name, v, f) for f, v in zip(fields, raw, strict=True)]

        return self._run("hmget", (name, fields), {}, decode)

    def hgetall(self, name: KeyT) -> _C:
        """``HGETALL``: every field, decrypted."""
        return self._run("hgetall", (name,), {}, lambda raw: self._codec.decode_hash(name, raw))

    def hvals(self, name: KeyT) -> _C:
        """``HVALS`` needs the field names to check each value, so it reads ``HGETALL``."""
        return self._run(
            "hgetall", (name,), {}, lambda raw: list(self._codec.decode_hash(name, raw).values())
        )

    # -- everything else --------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _KEY_ONLY_COMMANDS:
            return getattr(self._target, name)
        raise RedisCommandError(
            f"{name!r} is not offered by the encrypting wrapper (it could store or return a "
            "value unencrypted); use .raw for keys whose values are not encrypted"
        )


class EncryptedPipeline(_Commands["EncryptedPipeline"]):
    """A redis-py pipeline whose value commands encrypt, and whose ``execute`` decrypts."""

    def __init__(self, pipeline: Any, codec: RedisValueCodec) -> None:
        self._target = pipeline
        self._codec = codec
        self._decoders: list[Callable[[Any], Any]] = []

    def _run(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        decode: Callable[[Any], Any],
    ) -> EncryptedPipeline:
        getattr(self._target, name)(*args, **kwargs)
        self._decoders.append(decode)
        return self

    def __getattr__(self, name: str) -> Any:
        if name in _KEY_ONLY_COMMANDS and name not in {"close", "aclose", "scan_iter"}:
            command = getattr(self._target, name)

            def queued(*args: Any, **kwargs: Any) -> EncryptedPipeline:
                command(*args, **kwargs)
                self._decoders.append(_same)
                return self

            return queued
        return super().__getattr__(name)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Runs the queued commands; values of encrypted keys come back decrypted."""
        results = self._target.execute(raise_on_error=raise_on_error)
        return self._finish(results)

    def _finish(self, results: list[Any]) -> list[Any]:
        decoders, self._decoders = self._decoders, []
        return [
            r if isinstance(r, Exception) else d(r) for d, r in zip(decoders, results, strict=True)
        ]

    def reset(self) -> None:
        """Drops the queued commands."""
        self._decoders = []
        self._target.reset()

    def __enter__(self) -> EncryptedPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    def __len__(self) -> int:
        return len(self._decoders)


class _Client(_Commands[_C]):
    """What the sync and asyncio clients share besides the commands: checks and the codec."""

    def __init__(
        self,
        client: Any,
        service: EncryptionService,
        patterns: Iterable[KeyPattern],
        *,
        decode_responses: bool = False,
    ) -> None:
        check_client(client)
        self._target = client
        self._codec = RedisValueCodec(service, patterns, decode_responses=decode_responses)


class EncryptedRedis(_Client[Any]):
    """A redis-py client whose values under the configured key patterns are encrypted.

    Args:
        client: A ``redis.Redis`` created with ``decode_responses=False`` (the default).
        service: The encryption service.
        patterns: Which keys hold encrypted values (first match wins).
        decode_responses: Return decrypted values as ``str`` instead of ``bytes``.

    Raises:
        ConfigurationError: No pattern given, or the client decodes responses itself.
    """

    def _run(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        decode: Callable[[Any], Any],
    ) -> Any:
        return decode(getattr(self._target, name)(*args, **kwargs))

    def pipeline(self, transaction: bool = True) -> EncryptedPipeline:
        """A pipeline (``MULTI``/``EXEC`` when ``transaction``) with the same encryption."""
        return EncryptedPipeline(self._target.pipeline(transaction=transaction), self._codec)

    def __repr__(self) -> str:
        return f"EncryptedRedis({self._target!r})"


class AsyncEncryptedPipeline(EncryptedPipeline):
    """The asyncio pipeline: commands are queued as in redis-py, ``execute`` is awaited."""

    async def execute(self, raise_on_error: bool = True) -> list[Any]:  # type: ignore[override]
        """Runs the queued commands; values of encrypted keys come back decrypted."""
        results = await self._target.execute(raise_on_error=raise_on_error)
        return self._finish(results)

    async def __aenter__(self) -> AsyncEncryptedPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._decoders = []
        await self._target.reset()


class AsyncEncryptedRedis(_Client[Awaitable[Any]]):
    """:class:`EncryptedRedis` for ``redis.asyncio.Redis``: every command is awaited.

    Sealing and opening with a cached data key take about a microsecond and run inline; a cache
    miss asks the key provider on the event loop's thread once per data key lifetime. Warm the
    cache at start-up (one encrypt per context) where that first call must not block the loop.
    """

    def _run(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        decode: Callable[[Any], Any],
    ) -> Awaitable[Any]:
        command = getattr(self._target, name)

        async def run() -> Any:
            return decode(await command(*args, **kwargs))

        return run()

    def pipeline(self, transaction: bool = True) -> AsyncEncryptedPipeline:
        """An asyncio pipeline with the same encryption."""
        return AsyncEncryptedPipeline(self._target.pipeline(transaction=transaction), self._codec)

    def __repr__(self) -> str:
        return f"AsyncEncryptedRedis({self._target!r})"
