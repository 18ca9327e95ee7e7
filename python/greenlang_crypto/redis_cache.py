"""A shared Redis cache of *wrapped* key records for a fleet (never a plaintext key).

Beside the key store (PostgreSQL), a fleet of N cold processes would each read the same
branch-key and stored-DEK rows from the database. With this cache the first process to read a
row writes its wrapped form to Redis and the others read it from there; every process still
unwraps through its provider (KMS), so Redis never sees a usable key.

Entries are stamped with the keyring epoch of the process that wrote them, and a reader takes
an entry only when that stamp is at least the epoch it has loaded itself. Every key change
(rotation, deletion, rewrap, retirement) raises the epoch, so no entry written before a change
is served after an instance has learned about it.

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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from greenlang_crypto import _forks

if TYPE_CHECKING:
    from greenlang_crypto.keys.store import DekRecord

__all__ = ["RedisKeyCache", "dek_record_from_json", "dek_record_to_json"]

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
        #: Outcomes: hit, miss, stale (older epoch), error, skipped (in backoff), write.
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

    def get(self, name: str, min_epoch: int) -> dict[str, Any] | None:
        """The record stored under ``name`` if written at ``min_epoch`` or later, else None."""
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
            if not isinstance(record, dict):
                raise TypeError("record")
        except (ValueError, KeyError, TypeError):
            self._count("error")
            return None
        if epoch < min_epoch:
            self._count("stale")
            return None
        self._count("hit")
        return record

    def put(self, name: str, record: dict[str, Any], epoch: int) -> None:
        """Stores ``record`` (wrapped keys and metadata only) stamped with ``epoch``."""
        if not self._available():
            return
        payload = json.dumps({"epoch": epoch, "record": record}, separators=(",", ":"))
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
        """Outcome counters (hit, miss, stale, error, skipped, write)."""
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
