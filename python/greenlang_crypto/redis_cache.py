"""A shared Redis cache of *wrapped* key records for a fleet (never a plaintext key).

Beside the key store (PostgreSQL), a fleet of N cold processes would each read the same
branch-key and stored-DEK rows from the database. With this cache the first process to read a
row writes its wrapped form to Redis and the others read it from there; every process still
unwraps through its provider (KMS), so Redis never sees a usable key.

Entries are stamped with the keyring epoch of the process that wrote them, and a reader takes
an entry only when that stamp is at least the epoch it has loaded itself. Every key change
(rotation, deletion, rewrap, retirement) raises the epoch, so no entry written before a change
is served after an instance has learned about it. An entry stamped above the reader's own
epoch is taken only once the key store confirms that epoch.

Redis is not trusted: whoever can write to it could plant, replay or edit entries. So every
entry carries a MAC over its name, epoch and record (:class:`SharedEntry`), under a key
derived from the very key the record wraps. Only a process that can unwrap that key through
the provider (KMS) can make or check the MAC, and a reader checks it right after unwrapping,
before it uses the key or the record. An entry rebuilt from a key-store backup, moved to
another name, or re-stamped with another epoch fails the check and the reader goes to the key
store instead.

Redis is an optimization and never a dependency of the data path: any Redis error (refused
connection, timeout, a bad entry) is counted and treated as a miss, and after an error the
cache stays out of the way for ``backoff_seconds``, so an outage costs one short timeout, not
one per key.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenlang_crypto import _forks

if TYPE_CHECKING:
    from greenlang_crypto._core import DataKey
    from greenlang_crypto.keys.store import DekRecord

__all__ = ["RedisKeyCache", "SharedEntry", "dek_record_from_json", "dek_record_to_json"]

#: The HKDF purpose of an entry's MAC key, derived from the key the entry's record wraps.
_MAC_PURPOSE = b"glc/shared-key-cache/entry-mac/v1"


def _message(name: str, epoch: int, record: dict[str, Any]) -> bytes:
    # Canonical JSON of the three authenticated fields, with a domain prefix.
    body = json.dumps([name, epoch, record], sort_keys=True, separators=(",", ":"))
    return b"glc-shared-key-cache/v1\x00" + body.encode()


def entry_tag(key: DataKey, name: str, epoch: int, record: dict[str, Any]) -> bytes:
    """The MAC of an entry, under a key derived from ``key`` (the key the record wraps)."""
    return key.derive_index_key(_MAC_PURPOSE).compute(_message(name, epoch, record))


@dataclass(frozen=True, slots=True)
class SharedEntry:
    """One entry read from the cache: not trusted until :meth:`verify` passes.

    Attributes:
        name: The entry's name (without the prefix).
        epoch: The keyring epoch its writer had loaded.
        record: The wrapped key record.
        tag: The MAC the writer computed.
    """

    name: str
    epoch: int
    record: dict[str, Any]
    tag: bytes

    def verify(self, key: DataKey) -> bool:
        """Whether the MAC holds under ``key``, the key the record unwrapped to."""
        return key.derive_index_key(_MAC_PURPOSE).verify(
            _message(self.name, self.epoch, self.record), self.tag
        )


_log = logging.getLogger("greenlang_crypto.redis_cache")


class RedisKeyCache:
    """Wrapped key records in Redis, stamped with the keyring epoch.

    Args:
        client: A redis-py client (``redis.Redis``); give it short socket timeouts.
        prefix: Prefix of every Redis key this cache writes.
        ttl_seconds: Lifetime of an entry (at most the DEK cache TTL).
        backoff_seconds: After an error, how long to skip Redis entirely.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "glc:keys:",
        ttl_seconds: float = 300.0,
        backoff_seconds: float = 5.0,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._backoff = backoff_seconds
        self._down_until = 0.0
        self._lock = threading.Lock()
        #: Outcomes: hit, miss, stale (older epoch), unconfirmed (a newer epoch the key store
        #: does not confirm), forged (a MAC or record check failed), error, skipped (in
        #: backoff), write.
        self.outcomes: Counter[str] = Counter()
        # redis-py replaces its own connections in a child; only this lock is ours.
        _forks.fresh_locks_after_fork(self, "_lock")

    @classmethod
    def from_url(
        cls, url: str, *, ttl_seconds: float = 300.0, backoff_seconds: float = 5.0
    ) -> RedisKeyCache:
        """Connects lazily to ``redis://...``: 0.2 s connect and socket timeouts, no retries.

        Raises:
            ConfigurationError: redis-py is not installed.
        """
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ModuleNotFoundError:
            from greenlang_crypto.exceptions import ConfigurationError

            raise ConfigurationError(
                'the Redis key cache needs the redis extra: pip install "greenlang-crypto[redis]"'
            ) from None
        # One attempt: the key store is the fallback, so retrying Redis only adds latency.
        client = redis.Redis.from_url(
            url, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
        )
        return cls(client, ttl_seconds=ttl_seconds, backoff_seconds=backoff_seconds)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def _available(self) -> bool:
        if time.monotonic() < self._down_until:
            self._count("skipped")
            return False
        return True

    def _failed(self, exc: BaseException) -> None:
        self._count("error")
        self._down_until = time.monotonic() + self._backoff
        # The type only: a redis error message may echo the command and its arguments.
        _log.warning("redis key cache unavailable, using the key store: %s", type(exc).__name__)

    def get(
        self,
        name: str,
        min_epoch: int,
        *,
        confirm_epoch: Callable[[int], bool] | None = None,
    ) -> SharedEntry | None:
        """The entry stored under ``name`` if written at ``min_epoch`` or later, else None.

        The entry is not verified yet: the caller unwraps its key and calls
        :meth:`SharedEntry.verify` (and :meth:`reject` when that fails).

        Args:
            name: The entry's name.
            min_epoch: The keyring epoch the reader has loaded.
            confirm_epoch: Asks the key store whether an epoch above ``min_epoch`` is real
                (typically a keyring refresh); without it, such entries are refused.
        """
        if not self._available():
            return None
        try:
            raw = self._client.get(self._prefix + name)
        except Exception as exc:  # any Redis failure degrades to the key store
            self._failed(exc)
            return None
        if raw is None:
            self._count("miss")
            return None
        try:
            entry = json.loads(raw)
            epoch = int(entry["epoch"])
            record = entry["record"]
            tag = bytes.fromhex(str(entry["tag"]))
            if not isinstance(record, dict):
                raise TypeError("record")
        except (ValueError, KeyError, TypeError):
            self._count("error")
            return None
        if epoch < min_epoch:
            self._count("stale")
            return None
        if epoch > min_epoch and (confirm_epoch is None or not confirm_epoch(epoch)):
            self._count("unconfirmed")
            return None
        self._count("hit")
        return SharedEntry(name, epoch, record, tag)

    def reject(self) -> None:
        """Counts an entry whose MAC or record did not check out (the caller reads the store)."""
        self._count("forged")
        _log.warning("redis key cache entry refused: it does not authenticate")

    def put(self, name: str, record: dict[str, Any], epoch: int, key: DataKey) -> None:
        """Stores ``record`` (wrapped keys and metadata only) stamped with ``epoch``.

        Args:
            name: The entry's name.
            record: The wrapped key record.
            epoch: The keyring epoch the writer has loaded.
            key: The key ``record`` wraps, unwrapped: the entry's MAC key derives from it.
        """
        if not self._available():
            return
        tag = entry_tag(key, name, epoch, record)
        payload = json.dumps(
            {"epoch": epoch, "record": record, "tag": tag.hex()}, separators=(",", ":")
        )
        try:
            self._client.set(self._prefix + name, payload, px=self._ttl_ms)
        except Exception as exc:  # a failed write only costs the next reader a database read
            self._failed(exc)
            return
        self._count("write")

    def delete(self, names: Sequence[str]) -> None:
        """Removes entries (best effort: the epoch stamp already makes them unusable)."""
        if not names or not self._available():
            return
        try:
            self._client.delete(*(self._prefix + n for n in names))
        except Exception as exc:  # best effort, see above
            self._failed(exc)

    def stats(self) -> dict[str, int]:
        """Outcome counters (hit, miss, stale, unconfirmed, forged, error, skipped, write)."""
        with self._lock:
            return dict(self.outcomes)

    def __repr__(self) -> str:
        return f"RedisKeyCache(prefix={self._prefix!r}, outcomes={dict(self.outcomes)})"


def dek_record_to_json(record: DekRecord) -> dict[str, Any]:
    """A stored DEK row as a JSON-able dict (the DEK itself only wrapped, as hex)."""
    return {
        "dek_id": record.dek_id,
        "key_version": record.key_version,
        "provider": record.provider,
        "wrapping_key_id": record.wrapping_key_id,
        "wrapped": record.wrapped.hex(),
        "context": dict(record.context),
        "context_digest": record.context_digest.hex(),
        "created_at": record.created_at,
    }


def dek_record_from_json(data: dict[str, Any] | None) -> DekRecord | None:
    """The inverse of :func:`dek_record_to_json`; None for a missing or damaged entry."""
    from greenlang_crypto.keys.store import DekRecord

    if data is None:
        return None
    try:
        context = data["context"]
        if not isinstance(context, dict):
            raise TypeError("context")
        return DekRecord(
            int(data["dek_id"]),
            int(data["key_version"]),
            str(data["provider"]),
            str(data["wrapping_key_id"]),
            bytes.fromhex(str(data["wrapped"])),
            {str(k): str(v) for k, v in context.items()},
            bytes.fromhex(str(data["context_digest"])),
            float(data["created_at"]),
        )
    except (KeyError, ValueError, TypeError):
        return None  # read the key store instead
