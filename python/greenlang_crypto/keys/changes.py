"""The keyring's change counter (epoch) and its PostgreSQL notifications.

Every key-state change (rotation, retirement, rewrap, an index or branch key change) counts
one in ``glc_keyring_changes``, in the transaction that makes it. Every instance polls this
counter (one indexed single-row read), and on PostgreSQL a NOTIFY on :data:`NOTIFY_CHANNEL`
wakes its listeners at commit, so no instance has to re-read the keyring to find out that
nothing changed.
"""

from __future__ import annotations

import time
from typing import Any

from greenlang_crypto.keys.connection import Database, idempotent

__all__ = ["NOTIFY_CHANNEL", "KeyringChanges"]

#: The PostgreSQL channel on which every key-state change is announced (LISTEN/NOTIFY).
NOTIFY_CHANNEL = "glc_keyring"


class KeyringChanges:
    """The change counter of one key store.

    Args:
        db: The key store's database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def bump(self, cur: Any) -> None:
        """Counts one key-state change on ``cur``, in the transaction that makes it."""
        cur.execute(
            self.db.sql(
                "UPDATE glc_keyring_changes SET epoch = epoch + 1, changed_at = ? WHERE id = 1"
            ),
            (time.time(),),
        )
        if self.db.dialect == "postgresql":
            cur.execute(f"NOTIFY {NOTIFY_CHANNEL}")

    def bump_and_read(self, cur: Any) -> int:
        """Counts one change like :meth:`bump` and returns the new counter."""
        self.bump(cur)
        cur.execute("SELECT epoch FROM glc_keyring_changes WHERE id = 1")
        return int(cur.fetchone()[0])

    def notify(self, channel: str) -> None:
        """Sends a notification on ``channel`` (PostgreSQL; a no-op on SQLite).

        ``channel`` is a plain identifier the caller made (it is written into the
        statement: NOTIFY takes no parameter).
        """
        if self.db.pool is None:
            return
        if not channel.isidentifier() or not channel.isascii():
            raise ValueError("channel must be a plain identifier")
        with self.db.one() as cur:
            cur.execute(f"NOTIFY {channel}")

    @idempotent
    def epoch(self) -> int:
        """The key-state change counter (rises with every rotation, retirement, rewrap...)."""
        with self.db.one() as cur:
            cur.execute("SELECT epoch FROM glc_keyring_changes WHERE id = 1")
            row = cur.fetchone()
            return int(row[0]) if row else 0
