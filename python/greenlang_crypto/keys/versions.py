"""Key versions (states, wrapping keys and their history) and stored (wrapped) DEKs.

A stored DEK row is committed before any ciphertext that references it is returned, so
nothing is ever written that cannot be read back. Rows hold only wrapped DEKs, key ids, the
(non-secret) encryption context and counters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from greenlang_crypto._core import random_bytes
from greenlang_crypto.exceptions import DataErasedError, KeyStateError, TenantErasingError
from greenlang_crypto.keys.changes import KeyringChanges
from greenlang_crypto.keys.connection import Database, idempotent

__all__ = [
    "KEY_STATES",
    "DekRecord",
    "KeyVersion",
    "KeyVersions",
    "StoredDeks",
    "WrappingKeyRecord",
]

#: Key version states. ``primary`` encrypts; ``active`` and ``decrypt_only`` decrypt;
#: ``retired`` versions are below the minimum decryption version and refuse to decrypt.
KEY_STATES = ("primary", "active", "decrypt_only", "retired")


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of the keyring.

    Attributes:
        version: The version number (1, 2, ...).
        state: One of :data:`KEY_STATES`.
        provider: Provider name (``local``, ``aws-kms``).
        wrapping_key_id: The master key id or KMS key ARN that wraps this version's DEKs.
        created_at: Creation time (UNIX seconds).
        rotated_at: When it stopped being primary, if it did.
    """

    version: int
    state: str
    provider: str
    wrapping_key_id: str
    created_at: float
    rotated_at: float | None


@dataclass(frozen=True, slots=True)
class DekRecord:
    """A stored DEK row (the DEK itself only in wrapped form).

    Attributes:
        dek_id: The id written into compact envelopes.
        key_version: Keyring version the DEK belongs to.
        provider: Provider that wrapped it.
        wrapping_key_id: The wrapping key id.
        wrapped: The wrapped DEK.
        context: The encryption context it is bound to (non-secret by definition).
        context_digest: SHA-256 of the canonical context.
        created_at: Creation time.
    """

    dek_id: int
    key_version: int
    provider: str
    wrapping_key_id: str
    wrapped: bytes
    context: dict[str, str]
    context_digest: bytes
    created_at: float


@dataclass(frozen=True, slots=True)
class WrappingKeyRecord:
    """A wrapping key that a key version had at some time.

    Attributes:
        version: The key version.
        provider: Provider of the wrapping key.
        wrapping_key_id: The wrapping key id.
        added_at: When the version started using it.
        destroyed_at: When an operator destroyed it (inline envelopes naming it stop
            decrypting), or None.
    """

    version: int
    provider: str
    wrapping_key_id: str
    added_at: float
    destroyed_at: float | None


class KeyVersions:
    """The keyring's versions, their minimum decryption version and wrapping-key history.

    Args:
        db: The key store's database.
        changes: The change counter every key-state change counts on.
    """

    def __init__(self, db: Database, changes: KeyringChanges) -> None:
        self.db = db
        self.changes = changes

    @idempotent
    def versions(self) -> list[KeyVersion]:
        """All key versions, ascending."""
        with self.db.one() as cur:
            cur.execute(
                "SELECT version, state, provider, wrapping_key_id, created_at, rotated_at "
                "FROM glc_key_versions ORDER BY version"
            )
            return [KeyVersion(*row) for row in cur.fetchall()]

    @idempotent
    def min_decryption_version(self) -> int:
        """The lowest version allowed to decrypt (1 when never raised)."""
        with self.db.one() as cur:
            cur.execute("SELECT min_decryption_version FROM glc_keyring WHERE id = 1")
            row = cur.fetchone()
            return int(row[0]) if row else 1

    def add_primary_version(self, provider: str, wrapping_key_id: str) -> KeyVersion:
        """Adds version N+1 as primary; the previous primary becomes ``active``."""
        added = self._add_version(provider, wrapping_key_id, only_if_empty=False)
        assert added is not None
        return added

    def add_first_version(self, provider: str, wrapping_key_id: str) -> bool:
        """Adds version 1 unless a version exists (instances of a new fleet may race here).

        Returns whether this call added it.
        """
        return self._add_version(provider, wrapping_key_id, only_if_empty=True) is not None

    def _add_version(
        self, provider: str, wrapping_key_id: str, *, only_if_empty: bool
    ) -> KeyVersion | None:
        now = time.time()
        with self.db.transaction(serialized=True) as cur:
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM glc_key_versions")
            version = int(cur.fetchone()[0]) + 1
            if only_if_empty and version > 1:
                return None
            cur.execute(
                self.db.sql(
                    "UPDATE glc_key_versions SET state = 'active', rotated_at = ? "
                    "WHERE state = 'primary'"
                ),
                (now,),
            )
            cur.execute(
                self.db.sql(
                    "INSERT INTO glc_key_versions "
                    "(version, state, provider, wrapping_key_id, created_at) "
                    "VALUES (?, 'primary', ?, ?, ?)"
                ),
                (version, provider, wrapping_key_id, now),
            )
            if version == 1:
                cur.execute(
                    self.db.sql(
                        "INSERT INTO glc_keyring (id, min_decryption_version) VALUES (1, 1)"
                    )
                )
            self._add_wrapping_history(cur, version, provider, wrapping_key_id, now)
            self.changes.bump(cur)
        return KeyVersion(version, "primary", provider, wrapping_key_id, now, None)

    def _add_wrapping_history(
        self, cur: Any, version: int, provider: str, wrapping_key_id: str, now: float
    ) -> None:
        cur.execute(
            self.db.sql(
                "INSERT INTO glc_wrapping_keys (version, provider, wrapping_key_id, added_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
            ),
            (version, provider, wrapping_key_id, now),
        )

    def set_wrapping_key(self, version: int, wrapping_key_id: str) -> None:
        """Points a version at a new wrapping key (after all its DEKs were rewrapped).

        The previous wrapping key stays in the history: inline envelopes made before the
        rewrap carry their DEK wrapped under it and keep decrypting until an operator destroys
        it (:meth:`destroy_wrapping_key`).
        """
        with self.db.transaction(serialized=True) as cur:
            cur.execute(
                self.db.sql("SELECT provider FROM glc_key_versions WHERE version = ?"), (version,)
            )
            row = cur.fetchone()
            if row is None:
                raise KeyStateError(f"key version {version} does not exist")
            cur.execute(
                self.db.sql("UPDATE glc_key_versions SET wrapping_key_id = ? WHERE version = ?"),
                (wrapping_key_id, version),
            )
            self._add_wrapping_history(cur, version, str(row[0]), wrapping_key_id, time.time())
            self.changes.bump(cur)

    @idempotent
    def wrapping_keys(self) -> list[WrappingKeyRecord]:
        """Every wrapping key any version ever had (destroyed ones included), by version."""
        with self.db.one() as cur:
            cur.execute(
                "SELECT version, provider, wrapping_key_id, added_at, destroyed_at "
                "FROM glc_wrapping_keys ORDER BY version, added_at"
            )
            return [
                WrappingKeyRecord(int(v), p, k, float(a), None if d is None else float(d))
                for v, p, k, a, d in cur.fetchall()
            ]

    def destroy_wrapping_key(self, wrapping_key_id: str) -> int:
        """Marks a wrapping key destroyed: inline envelopes naming it stop decrypting.

        Returns the number of history rows marked.

        Raises:
            KeyStateError: A key version, stored DEK or index key still uses it.
        """
        with self.db.transaction(serialized=True) as cur:
            for table in ("glc_key_versions", "glc_deks", "glc_index_keys", "glc_branch_keys"):
                cur.execute(
                    self.db.sql(f"SELECT 1 FROM {table} WHERE wrapping_key_id = ? LIMIT 1"),  # noqa: S608
                    (wrapping_key_id,),
                )
                if cur.fetchone() is not None:
                    raise KeyStateError(f"the wrapping key is still in use ({table})")
            cur.execute(
                self.db.sql(
                    "UPDATE glc_wrapping_keys SET destroyed_at = ? "
                    "WHERE wrapping_key_id = ? AND destroyed_at IS NULL"
                ),
                (time.time(), wrapping_key_id),
            )
            marked = int(cur.rowcount)
            if marked:
                self.changes.bump(cur)
            return marked

    def retire_below(self, min_version: int) -> int:
        """Raises the minimum decryption version and marks older versions ``retired``.

        The minimum only ever rises: a lower ``min_version`` than the current one changes
        nothing. Returns the minimum in force afterwards.

        Raises:
            KeyStateError: ``min_version`` would retire the primary version.
        """
        with self.db.transaction(serialized=True) as cur:
            cur.execute("SELECT version FROM glc_key_versions WHERE state = 'primary'")
            row = cur.fetchone()
            if row is None or min_version > int(row[0]):
                raise KeyStateError("cannot retire the primary key version")
            cur.execute("SELECT min_decryption_version FROM glc_keyring WHERE id = 1")
            current = cur.fetchone()
            current_min = int(current[0]) if current else 1
            if min_version <= current_min:
                return current_min
            cur.execute(
                self.db.sql(
                    "UPDATE glc_keyring SET min_decryption_version = ? "
                    "WHERE id = 1 AND min_decryption_version < ?"
                ),
                (min_version, min_version),
            )
            self.changes.bump(cur)
            cur.execute(
                self.db.sql("UPDATE glc_key_versions SET state = 'retired' WHERE version < ?"),
                (min_version,),
            )
        return min_version


class StoredDeks:
    """Stored (wrapped) DEK rows and their usage counters.

    Args:
        db: The key store's database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    @idempotent
    def insert_dek(
        self,
        key_version: int,
        provider: str,
        wrapping_key_id: str,
        wrapped: bytes,
        context: dict[str, str],
        context_digest: bytes,
    ) -> int:
        """Stores a wrapped DEK and commits; returns its new random 63-bit id.

        Raises:
            TenantErasingError: The context's tenant is being erased (checked in the same
                statement as the insert, so no DEK of the tenant is stored after its
                erasure began).
        """
        now = time.time()
        tenant_id = context.get("tenant_id")
        for _ in range(5):
            # Random ids (not a sequence) so ids reveal neither volume nor order.
            dek_id = int.from_bytes(random_bytes(8), "big") >> 1
            try:
                with self.db.one() as cur:
                    cur.execute(
                        self.db.sql(
                            "INSERT INTO glc_deks (dek_id, key_version, provider, "
                            "wrapping_key_id, wrapped, context_json, context_digest, created_at, "
                            "tenant_id) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS "
                            "(SELECT 1 FROM glc_tenant_erasures WHERE tenant_id = ? "
                            "AND state = 'erasing')"
                        ),
                        (
                            dek_id,
                            key_version,
                            provider,
                            wrapping_key_id,
                            wrapped,
                            json.dumps(context, sort_keys=True),
                            context_digest,
                            now,
                            tenant_id,
                            tenant_id,
                        ),
                    )
                    inserted = cur.rowcount
            except Exception as exc:  # an id collision retries; anything else propagates
                if "unique" not in str(exc).lower() and "duplicate" not in str(exc).lower():
                    raise
                continue
            if inserted == 0:
                raise TenantErasingError()
            return dek_id
        raise KeyStateError("could not allocate a DEK id")

    def record_usage(
        self, usage: dict[int, tuple[int, int]], *, retry_seconds: float | None = None
    ) -> None:
        """Stores the messages and bytes sealed under each DEK (counters only grow).

        ``retry_seconds`` overrides the store's retry bound (a shutdown does not wait long).
        """
        if not usage:
            return

        def write() -> None:
            with self.db.transaction() as cur:
                for dek_id, (messages, nbytes) in usage.items():
                    cur.execute(
                        self.db.sql(
                            "UPDATE glc_deks SET "
                            "messages = CASE WHEN messages < ? THEN ? ELSE messages END, "
                            "bytes = CASE WHEN bytes < ? THEN ? ELSE bytes END WHERE dek_id = ?"
                        ),
                        (messages, messages, nbytes, nbytes, dek_id),
                    )

        self.db.retry(write, budget_seconds=retry_seconds)

    @idempotent
    def usage_by_version(self) -> dict[int, tuple[int, int, int]]:
        """Per key version: stored DEKs, messages sealed and bytes sealed (as last flushed)."""
        with self.db.one() as cur:
            cur.execute(
                "SELECT key_version, COUNT(*), COALESCE(SUM(messages), 0), "
                "COALESCE(SUM(bytes), 0) FROM glc_deks GROUP BY key_version"
            )
            return {int(v): (int(n), int(m), int(b)) for v, n, m, b in cur.fetchall()}

    @idempotent
    def get_dek(self, dek_id: int) -> DekRecord | None:
        """Loads one stored DEK row (None when absent).

        ``dek_id`` comes from an envelope header, so any 64-bit value can arrive here; ids
        are 63-bit (see :meth:`insert_dek`), and the databases' signed BIGINT would overflow.

        Raises:
            DataErasedError: The DEK was erased (its tenant's erasure left a tombstone).
        """
        record = self._load(dek_id)
        if record is None and 0 <= dek_id < 2**63:
            # Only a miss pays for the second read: was it erased, or never there?
            with self.db.one() as cur:
                cur.execute(
                    self.db.sql(
                        "SELECT 1 FROM glc_erased_keys WHERE kind = 'stored' AND key_id = ?"
                    ),
                    (dek_id,),
                )
                if cur.fetchone() is not None:
                    raise DataErasedError()
        return record

    @idempotent
    def _load_retrying(self, dek_id: int) -> DekRecord | None:
        return self._load(dek_id)

    def _load(self, dek_id: int) -> DekRecord | None:
        if not 0 <= dek_id < 2**63:
            return None
        with self.db.one() as cur:
            cur.execute(
                self.db.sql(
                    "SELECT dek_id, key_version, provider, wrapping_key_id, wrapped, "
                    "context_json, context_digest, created_at FROM glc_deks WHERE dek_id = ?"
                ),
                (dek_id,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return DekRecord(
            int(row[0]),
            int(row[1]),
            row[2],
            row[3],
            bytes(row[4]),
            json.loads(row[5]),
            bytes(row[6]),
            float(row[7]),
        )

    def iter_deks(self, batch_size: int = 500) -> Iterator[list[DekRecord]]:
        """Yields all stored DEKs in batches ordered by id (keyset pagination)."""
        last = -1
        while True:
            with self.db.transaction() as cur:
                cur.execute(
                    self.db.sql(
                        "SELECT dek_id FROM glc_deks WHERE dek_id > ? ORDER BY dek_id LIMIT ?"
                    ),
                    (last, batch_size),
                )
                ids = [int(r[0]) for r in cur.fetchall()]
            if not ids:
                return
            # Rows deleted since the page was read (an erasure, a retirement) are skipped.
            records = [r for r in map(self._load_retrying, ids) if r is not None]
            yield records
            last = ids[-1]

    def replace_wrapped(
        self, dek_id: int, old_wrapped: bytes, new_wrapped: bytes, wrapping_key_id: str
    ) -> bool:
        """Compare-and-swap of a DEK's wrapped form; returns whether this call updated it."""
        with self.db.transaction() as cur:
            cur.execute(
                self.db.sql(
                    "UPDATE glc_deks SET wrapped = ?, wrapping_key_id = ?, rewrapped_at = ? "
                    "WHERE dek_id = ? AND wrapped = ?"
                ),
                (new_wrapped, wrapping_key_id, time.time(), dek_id, old_wrapped),
            )
            return bool(cur.rowcount == 1)

    @idempotent
    def count_deks_by_version(self) -> dict[int, int]:
        """Stored DEKs per key version."""
        with self.db.one() as cur:
            cur.execute("SELECT key_version, COUNT(*) FROM glc_deks GROUP BY key_version")
            return {int(v): int(n) for v, n in cur.fetchall()}

    @idempotent
    def delete_deks_below(self, min_version: int) -> int:
        """Deletes stored DEKs of versions below ``min_version``; returns the count."""
        with self.db.transaction() as cur:
            cur.execute(self.db.sql("DELETE FROM glc_deks WHERE key_version < ?"), (min_version,))
            return int(cur.rowcount)
