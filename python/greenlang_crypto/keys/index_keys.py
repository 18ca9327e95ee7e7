"""Blind-index keys: versioned root keys and the HMAC keys derived from them.

Root keys are stored wrapped; per-purpose HMAC keys are derived with HKDF (RFC 5869).

Unwrapped root keys and derived keys live no longer than the DEK cache TTL: :meth:`purge`
drops the expired ones (the keyring's background thread calls it), and :meth:`clear` drops
all of them (``disable_cached_keys()``, ``close()``, a keyring change).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from greenlang_crypto import _forks
from greenlang_crypto._core import BlindIndexKey, DataKey
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import KeyStateError
from greenlang_crypto.keys.index_key_store import IndexKeyRecord

__all__ = ["INDEX_ROOT_CONTEXT", "IndexKeys"]

#: The context that binds blind-index root keys at the provider (KMS EncryptionContext).
INDEX_ROOT_CONTEXT = EncryptionContext(tenant_id="_system", data_class="blind-index-root")


class IndexKeys:
    """Holds unwrapped index root keys and derived keys for at most ``ttl`` seconds.

    Args:
        unwrap: Unwraps one root key record through the provider.
        ttl: Seconds an unwrapped or derived key may stay in memory.
    """

    def __init__(self, unwrap: Callable[[IndexKeyRecord], DataKey], ttl: float) -> None:
        self._unwrap = unwrap
        self._ttl = ttl
        self._lock = threading.Lock()
        _forks.fresh_locks_after_fork(self, "_lock")
        self._roots: dict[int, tuple[DataKey, float]] = {}
        self._derived: dict[tuple[int, str], tuple[BlindIndexKey, float]] = {}

    def remember_root(self, version: int, key: DataKey) -> None:
        """Keeps a root key just generated (saves one unwrap)."""
        with self._lock:
            self._roots[version] = (key, time.monotonic())

    def key(self, record: IndexKeyRecord, purpose: str) -> BlindIndexKey:
        """The HMAC key of ``purpose`` under index root ``record``.

        Raises:
            KeyStateError: The version is retired.
        """
        if record.state == "retired":
            raise KeyStateError(f"index key version {record.version} is not usable")
        now = time.monotonic()
        slot = (record.version, purpose)
        cached = self._derived.get(slot)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        with self._lock:
            root_entry = self._roots.get(record.version)
        if root_entry is None or now - root_entry[1] >= self._ttl:
            root = self._unwrap(record)
            root_entry = (root, now)
            with self._lock:
                self._roots[record.version] = root_entry
        key = root_entry[0].derive_index_key(f"v{record.version}|{purpose}".encode())
        with self._lock:
            self._derived[slot] = (key, root_entry[1])
        return key

    def forget(self, version: int) -> None:
        """Drops the root and derived keys of one version (it was retired)."""
        with self._lock:
            self._roots.pop(version, None)
            self._derived = {k: v for k, v in self._derived.items() if k[0] != version}

    def purge(self) -> None:
        """Drops keys older than the TTL."""
        cutoff = time.monotonic() - self._ttl
        with self._lock:
            self._roots = {v: e for v, e in self._roots.items() if e[1] > cutoff}
            self._derived = {k: e for k, e in self._derived.items() if e[1] > cutoff}

    def clear(self) -> None:
        """Drops every key."""
        with self._lock:
            self._roots = {}
            self._derived = {}

    def __len__(self) -> int:
        return len(self._roots) + len(self._derived)
