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
"""

from __future__ import annotations

import fnmatch
import re
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import ConfigurationError, InvalidArgumentError

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

KeyT = str | bytes
_MEMO_LIMIT = 10_000
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


@dataclass(frozen=True, slots=True)
class KeyPattern:
    """Which keys hold encrypted values, and under which encryption context.

    Attributes:
        pattern: A glob on the key name, as Redis ``MATCH`` understands it (``*``, ``?``,
            ``[...]``), for example ``"session:*"``.
        data_class: The context's ``data_class`` for these values.
        tenant_id: The context's ``tenant_id``: a fixed string, or a callable that derives it
            from the key name (a ``str``).
    """

    pattern: str
    data_class: str
    tenant_id: str | Callable[[str], str]


class _Rule:
    __slots__ = ("context", "match", "pattern")

    def __init__(self, pattern: KeyPattern) -> None:
        if not isinstance(pattern.pattern, str) or not pattern.pattern:
            raise ConfigurationError("a key pattern must be a non-empty str")
        self.pattern = pattern
        self.match = re.compile(fnmatch.translate(pattern.pattern)).match
        # A fixed tenant gives one context for every key of the pattern: built once.
        self.context = (
            EncryptionContext(tenant_id=pattern.tenant_id, data_class=pattern.data_class)
            if isinstance(pattern.tenant_id, str)
            else None
        )

    def context_for(self, key: str) -> EncryptionContext:
        if self.context is not None:
            return self.context
        assert callable(self.pattern.tenant_id)
        return EncryptionContext(
            tenant_id=self.pattern.tenant_id(key), data_class=self.pattern.data_class
        )


def _key_text(key: KeyT) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        # Key names that are not UTF-8 still match byte-for-byte: surrogateescape keeps them
        # distinct and reversible.
        return key.decode("utf-8", "surrogateescape")
    raise InvalidArgumentError(f"a Redis key must be str or bytes, not {type(key).__name__}")


def _value_bytes(value: object) -> bytes:
    """The bytes redis-py would send for ``value`` (it refuses bool and None the same way)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, bool) or value is None:
        raise TypeError(f"a Redis value cannot be {value!r}; convert it to bytes or str first")
    if isinstance(value, int | float):
        return repr(value).encode()
    raise TypeError(f"a Redis value must be bytes, str, int or float, not {type(value).__name__}")


def _bound(kind: bytes, key: str, field: KeyT | None) -> bytes:
    """The associated data of one value: its kind, key name and field, each length-prefixed.

    Length prefixes make the encoding injective, so no key/field split can be confused with
    another (``"a:b" + "c"`` against ``"a" + "b:c"``).
    """
    raw_key = key.encode("utf-8", "surrogateescape")
    out = b"glc-redis/v1" + kind + struct.pack(">I", len(raw_key)) + raw_key
    if field is not None:
        raw_field = field if isinstance(field, bytes) else _key_text(field).encode("utf-8")
        out += struct.pack(">I", len(raw_field)) + raw_field
    return out


class RedisValueCodec:
    """Encrypts and decrypts Redis values by key name; shared by every client wrapper.

    Args:
        service: The encryption service.
        patterns: Key patterns, first match wins.
        decode_responses: Return decrypted values as ``str`` (UTF-8) instead of ``bytes``.
    """

    def __init__(
        self,
        service: EncryptionService,
        patterns: Iterable[KeyPattern],
        *,
        decode_responses: bool = False,
    ) -> None:
        self._service = service
        self._rules = tuple(_Rule(p) for p in patterns)
        if not self._rules:
            raise ConfigurationError("give at least one KeyPattern")
        self._decode = decode_responses
        # Hot keys are looked up again and again: remember their pattern (and the associated
        # data of their string value) instead of matching globs on every command.
        self._memo: dict[KeyT, tuple[str, _Rule | None, bytes]] = {}

    def _lookup(self, key: KeyT) -> tuple[str, _Rule | None, bytes]:
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        text = _key_text(key)
        found = next((rule for rule in self._rules if rule.match(text)), None)
        entry = (text, found, _bound(b"s", text, None) if found is not None else b"")
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()  # bounded memory under many distinct keys
        self._memo[key] = entry
        return entry

    def rule_for(self, key: KeyT) -> tuple[str, _Rule | None]:
        """The key as text and the first pattern it matches (or None: not encrypted)."""
        text, rule, _ = self._lookup(key)
        return text, rule

    def encrypted(self, key: KeyT) -> bool:
        """Whether values under ``key`` are encrypted."""
        return self.rule_for(key)[1] is not None

    def encode(self, key: KeyT, value: object, field: KeyT | None = None) -> object:
        """The value to send for ``key`` (and hash ``field``): an envelope, or ``value`` as is."""
        text, rule, string_aad = self._lookup(key)
        if rule is None:
            return value
        aad = string_aad if field is None else _bound(b"h", text, field)
        return self._service.encrypt(
            _value_bytes(value), rule.context_for(text), associated_data=aad
        )

    def decode(self, key: KeyT, raw: Any, field: KeyT | None = None) -> Any:
        """The value read from ``key`` (and ``field``): decrypted, or as Redis returned it.

        Raises:
            DecryptionError: The stored value is not an envelope made for this key and field.
        """
        if raw is None:
            return None
        text, rule, string_aad = self._lookup(key)
        if rule is None:
            return raw
        if not isinstance(raw, bytes):
            raise ConfigurationError(
                "the wrapped Redis client must return bytes (create it with "
                "decode_responses=False; pass decode_responses=True to the wrapper instead)"
            )
        aad = string_aad if field is None else _bound(b"h", text, field)
        plain = self._service.decrypt(raw, rule.context_for(text), associated_data=aad)
        return plain.decode("utf-8") if self._decode else plain

    def decode_hash(self, key: KeyT, raw: Mapping[Any, Any]) -> dict[Any, Any]:
        """Decrypts every field of a ``HGETALL`` answer."""
        if not self.encrypted(key):
            return dict(raw)
        out: dict[Any, Any] = {}
        for field, value in raw.items():
            name = field.decode("utf-8", "surrogateescape") if self._decode else field
            out[name] = self.decode(key, value, field)
        return out

    def encode_mapping(
        self, key: KeyT, mapping: Mapping[KeyT, object] | None
    ) -> dict[KeyT, object] | None:
        """Encrypts the values of a hash mapping (``HSET ... mapping=``)."""
        if mapping is None:
            return None
        return {f: self.encode(key, v, f) for f, v in mapping.items()}


def _check_client(client: Any) -> None:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) or {}
    if kwargs.get("decode_responses"):
        raise ConfigurationError(
            "the wrapped Redis client must use decode_responses=False (envelopes are bytes); "
            "pass decode_responses=True to the wrapper to get str values"
        )


def _same(value: Any) -> Any:
    return value


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
        encoded = {k: self._codec.encode(k, v) for k, v in mapping.items()}
        return self._run("mset", (encoded,), {}, _same)

    def msetnx(self, mapping: Mapping[KeyT, object]) -> _C:
        """``MSETNX``: like ``MSET``, only if none of the keys exists."""
        encoded = {k: self._codec.encode(k, v) for k, v in mapping.items()}
        return self._run("msetnx", (encoded,), {}, _same)

    def mget(self, keys: KeyT | Iterable[KeyT], *args: KeyT) -> _C:
        """``MGET``: each value decrypted for its own key."""
        names = [keys, *args] if isinstance(keys, str | bytes) else [*keys, *args]

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
        fields = [keys, *args] if isinstance(keys, str | bytes) else [*keys, *args]

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


class EncryptedRedis(_Commands[Any]):
    """A redis-py client whose values under the configured key patterns are encrypted.

    Args:
        client: A ``redis.Redis`` created with ``decode_responses=False`` (the default).
        service: The encryption service.
        patterns: Which keys hold encrypted values (first match wins).
        decode_responses: Return decrypted values as ``str`` instead of ``bytes``.

    Raises:
        ConfigurationError: No pattern given, or the client decodes responses itself.
    """

    def __init__(
        self,
        client: Any,
        service: EncryptionService,
        patterns: Iterable[KeyPattern],
        *,
        decode_responses: bool = False,
    ) -> None:
        _check_client(client)
        self._target = client
        self._codec = RedisValueCodec(service, patterns, decode_responses=decode_responses)

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


class AsyncEncryptedRedis(_Commands[Awaitable[Any]]):
    """:class:`EncryptedRedis` for ``redis.asyncio.Redis``: every command is awaited.

    Sealing and opening with a cached data key take about a microsecond and run inline; a cache
    miss asks the key provider on the event loop's thread once per data key lifetime. Warm the
    cache at start-up (one encrypt per context) where that first call must not block the loop.
    """

    def __init__(
        self,
        client: Any,
        service: EncryptionService,
        patterns: Iterable[KeyPattern],
        *,
        decode_responses: bool = False,
    ) -> None:
        _check_client(client)
        self._target = client
        self._codec = RedisValueCodec(service, patterns, decode_responses=decode_responses)

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
