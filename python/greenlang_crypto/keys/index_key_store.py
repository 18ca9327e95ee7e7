"""Blind-index root key rows: versioned, stored wrapped, with states like the keyring's.

Adding a version, changing a state or rewrapping one counts a keyring change, so every
instance reloads its index keys through the keyring's propagation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from greenlang_crypto.exceptions import KeyStateError
from greenlang_crypto.keys.changes import KeyringChanges
from greenlang_crypto.keys.connection import Database, idempotent

__all__ = ["IndexKeyRecord", "IndexKeyStore"]


@dataclass(frozen=True, slots=True)
class IndexKeyRecord:
    """A blind-index root key version (stored wrapped).

    Attributes:
        version: Index key version.
        state: ``primary`` (writes), ``active`` (lookups only) or ``retired``.
        provider: Provider that wrapped it.
        wrapping_key_id: The wrapping key id.
        wrapped: The wrapped root key.
        created_at: When the version was added (UNIX seconds): the rotation policy's age.
    """

    version: int
    state: str
    provider: str
    wrapping_key_id: str
    wrapped: bytes = field(repr=False)
    created_at: float = 0.0


class IndexKeyStore:
    """The index root key rows of one key store.

    Args:
        db: The key store's database.
        changes: The change counter every index key change counts on.
    """

    def __init__(self, db: Database, changes: KeyringChanges) -> None:
        self.db = db
        self.changes = changes

    @idempotent
    def index_keys(self) -> list[IndexKeyRecord]:
        """All index key versions, ascending."""
        with self.db.one() as cur:
            cur.execute(
                "SELECT version, state, provider, wrapping_key_id, wrapped, created_at "
                "FROM glc_index_keys ORDER BY version"
            )
            return [
                IndexKeyRecord(int(v), st, p, w, bytes(b), float(at))
                for v, st, p, w, b, at in cur.fetchall()
            ]

    def add_index_key(
        self, provider: str, wrapping_key_id: str, wrapped: bytes, *, first: bool = False
    ) -> int:
        """Adds index key version N+1 as primary; the previous primary becomes ``active``.

        With ``first``, only when there is no index key yet: instances making their first
        blind index at the same moment then share one version instead of each adding its
        own. Returns the new version, or with ``first`` the one already there (0 when every
        existing one is retired is impossible: a first key is only made when none exists).
        """
        with self.db.transaction(serialized=True) as cur:
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM glc_index_keys")
            version = int(cur.fetchone()[0]) + 1
            if first and version > 1:
                return version - 1
            cur.execute("UPDATE glc_index_keys SET state = 'active' WHERE state = 'primary'")
            cur.execute(
                self.db.sql(
                    "INSERT INTO glc_index_keys (version, state, provider, wrapping_key_id, "
                    "wrapped, created_at) VALUES (?, 'primary', ?, ?, ?, ?)"
                ),
                (version, provider, wrapping_key_id, wrapped, time.time()),
            )
            self.changes.bump(cur)
        return version

    def set_index_key_state(self, version: int, state: str) -> None:
        """Sets the state of an index key version (``active`` or ``retired``)."""
        if state not in ("active", "retired"):
            raise KeyStateError("index key state must be active or retired")
        with self.db.transaction(serialized=True) as cur:
            cur.execute(
                self.db.sql("SELECT state FROM glc_index_keys WHERE version = ?"), (version,)
            )
            row = cur.fetchone()
            if row is None:
                raise KeyStateError(f"index key version {version} does not exist")
            if row[0] == "primary":
                raise KeyStateError("cannot retire the primary index key")
            cur.execute(
                self.db.sql("UPDATE glc_index_keys SET state = ? WHERE version = ?"),
                (state, version),
            )
            self.changes.bump(cur)

    def replace_index_wrapped(
        self, version: int, old_wrapped: bytes, new_wrapped: bytes, wrapping_key_id: str
    ) -> bool:
        """Compare-and-swap of an index root key's wrapped form."""
        with self.db.transaction() as cur:
            cur.execute(
                self.db.sql(
                    "UPDATE glc_index_keys SET wrapped = ?, wrapping_key_id = ? "
                    "WHERE version = ? AND wrapped = ?"
                ),
                (new_wrapped, wrapping_key_id, version, old_wrapped),
            )
            changed = bool(cur.rowcount == 1)
            if changed:
                self.changes.bump(cur)
            return changed
