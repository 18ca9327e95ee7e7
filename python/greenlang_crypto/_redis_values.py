"""What the encrypted Redis clients do to values, without any I/O: shared by all of them.

Which keys are encrypted (glob patterns, first match wins), under which encryption context,
the associated data that binds a value to its key name and hash field, sealing a value into an
envelope and opening it again, and the checks on the options and the wrapped client. The sync
and asyncio clients and their pipelines in :mod:`greenlang_crypto.redis` only send commands and
hand the answers here.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenlang_crypto._redis_glob import compile_redis_glob
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import ConfigurationError, InvalidArgumentError

if TYPE_CHECKING:
    from greenlang_crypto.service import EncryptionService

__all__ = ["KeyPattern", "KeyT", "RedisValueCodec", "check_client"]

#: A Redis key name or hash field name, as redis-py takes it.
KeyT = str | bytes
_MEMO_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class KeyPattern:
    """Which keys hold encrypted values, and under which encryption context.

    Attributes:
        pattern: A glob on the key name, matched byte for byte as Redis ``MATCH`` matches it
            (``*``, ``?``, ``[...]``, ``[^...]``, backslash escapes), for example ``"session:*"``.
            A pattern Redis would read past its end (an unterminated ``[``) is refused.
        data_class: The context's ``data_class`` for these values.
        tenant_id: The context's ``tenant_id``: a fixed string, or a callable that derives it
            from the key name (a ``str``).
        max_age: Optional freshness bound in seconds. Each value then carries its write time
            inside the envelope (encrypted and authenticated), and a value older than
            ``max_age`` reads as missing (``None``), as if Redis had expired it: a ``PERSIST``
            or a replayed old envelope cannot keep it alive past the bound. Values written
            without ``max_age`` do not open under a pattern with it (nor the reverse): the
            mode is part of the associated data. ``None`` (the default): no bound.

    Example:
        ``KeyPattern("session:*", data_class="session", tenant_id="t1", max_age=3600)``
    """

    pattern: str
    data_class: str
    tenant_id: str | Callable[[str], str]
    max_age: float | None = None

    def __post_init__(self) -> None:
        age = self.max_age
        if age is not None and (
            isinstance(age, bool)
            or not isinstance(age, int | float)
            or not math.isfinite(age)
            or age <= 0
        ):
            raise ConfigurationError("max_age must be a positive number of seconds, or None")


def _now_ms() -> int:
    """Wall-clock milliseconds: the one clock every writer and reader of a value shares."""
    return time.time_ns() // 1_000_000


class _Rule:
    __slots__ = ("context", "match", "max_age_ms", "pattern")

    def __init__(self, pattern: KeyPattern) -> None:
        self.pattern = pattern
        self.max_age_ms = None if pattern.max_age is None else int(pattern.max_age * 1000)
        self.match = compile_redis_glob(pattern.pattern)
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


def _bound(kind: bytes, key: str, field: KeyT | None, timed: bool = False) -> bytes:
    """The associated data of one value: its kind, key name and field, each length-prefixed.

    Length prefixes make the encoding injective, so no key/field split can be confused with
    another (``"a:b" + "c"`` against ``"a" + "b:c"``). A value that carries its write time
    (``timed``) has another prefix, so it never opens as an untimed one or the reverse.
    """
    raw_key = key.encode("utf-8", "surrogateescape")
    prefix = b"glc-redis/v1t" if timed else b"glc-redis/v1"
    out = prefix + kind + struct.pack(">I", len(raw_key)) + raw_key
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
        raw = text.encode("utf-8", "surrogateescape")
        found = next((rule for rule in self._rules if rule.match(raw)), None)
        entry = (
            text,
            found,
            _bound(b"s", text, None, found.max_age_ms is not None) if found is not None else b"",
        )
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
        timed = rule.max_age_ms is not None
        aad = string_aad if field is None else _bound(b"h", text, field, timed)
        plain = _value_bytes(value)
        if timed:
            plain = struct.pack(">Q", _now_ms()) + plain
        return self._service.encrypt(plain, rule.context_for(text), associated_data=aad)

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
        max_age_ms = rule.max_age_ms
        aad = string_aad if field is None else _bound(b"h", text, field, max_age_ms is not None)
        plain = self._service.decrypt(raw, rule.context_for(text), associated_data=aad)
        if max_age_ms is not None:
            (written,) = struct.unpack_from(">Q", plain)
            if _now_ms() - written > max_age_ms:
                return None  # past its freshness bound: as if Redis had expired it
            plain = plain[8:]
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


def check_client(client: Any) -> None:
    """Refuses a wrapped client that decodes answers itself (envelopes are bytes).

    Raises:
        ConfigurationError: ``client`` was created with ``decode_responses=True``.
    """
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) or {}
    if kwargs.get("decode_responses"):
        raise ConfigurationError(
            "the wrapped Redis client must use decode_responses=False (envelopes are bytes); "
            "pass decode_responses=True to the wrapper to get str values"
        )
