"""Service instances registered in the key store: heartbeats, confirmations and liveness.

Each instance keeps a row with the keyring epoch it loaded and when it was last seen. A
retirement counts the live rows to know whether every instance has seen a change; a
*confirmation* (a heartbeat written only while the epoch is unchanged) is what lets it trust
a row (docs/KEYRING.md, "Self-fencing").
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from greenlang_crypto.keys.connection import Database, idempotent

__all__ = ["InstanceRecord", "InstanceStore"]


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """A service instance registered in the key store.

    Attributes:
        instance_id: Random id chosen by the instance at start.
        host: Host name.
        pid: Process id.
        epoch: The keyring change counter the instance last loaded.
        primary_version: The version it encrypts under.
        min_version: The minimum decryption version it enforces.
        started_at: Start time (UNIX seconds).
        last_seen: Last heartbeat (UNIX seconds, the store's clock).
        fence_seconds: How long after a confirmed heartbeat the instance may still seal on
            its view (0 for instances that do not fence themselves).
    """

    instance_id: str
    host: str
    pid: int
    epoch: int
    primary_version: int
    min_version: int
    started_at: float
    last_seen: float
    fence_seconds: float = 0.0


class InstanceStore:
    """The instance rows of one key store.

    Args:
        db: The key store's database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def heartbeat(
        self,
        instance_id: str,
        *,
        host: str,
        pid: int,
        epoch: int,
        primary_version: int,
        min_version: int,
        started_at: float,
        expected_epoch: int | None = None,
        fence_seconds: float = 0.0,
    ) -> bool:
        """Registers an instance or refreshes its row (keyring epoch, last seen).

        ``last_seen`` is the database's clock on PostgreSQL (every instance and every
        retirement then measure liveness on one clock, whatever their own clocks say).

        With ``expected_epoch`` the write is a *confirmation*: it happens only if the change
        counter still equals ``expected_epoch``, and it returns whether it did. On PostgreSQL
        the check and the write are one statement that share-locks the counter's row, so a
        key change either commits after it (and every later reader sees this row) or before
        it (and the confirmation fails); on SQLite the write lock serializes them. This is
        what lets a retirement trust an instance's row: see docs/KEYRING.md, "Self-fencing".
        """
        values = (instance_id, host, pid, epoch, primary_version, min_version, started_at)
        upsert = (
            "ON CONFLICT (instance_id) DO UPDATE SET epoch = excluded.epoch, "
            "primary_version = excluded.primary_version, min_version = excluded.min_version, "
            "last_seen = excluded.last_seen, fence_seconds = excluded.fence_seconds"
        )
        columns = (
            "INSERT INTO glc_instances (instance_id, host, pid, epoch, primary_version, "
            "min_version, started_at, last_seen, fence_seconds) "
        )
        if self.db.dialect == "postgresql":
            clock = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
            # One statement in a transaction of its own: the epoch check, the share lock and
            # the write commit together, with no client round trip in between.
            with self.db.one() as cur:
                if expected_epoch is None:
                    cur.execute(
                        f"{columns}VALUES (%s, %s, %s, %s, %s, %s, %s, {clock}, %s) {upsert}",
                        (*values, fence_seconds),
                    )
                    return True
                cur.execute(
                    "WITH e AS (SELECT epoch FROM glc_keyring_changes WHERE id = 1 FOR SHARE) "  # noqa: S608
                    f"{columns}SELECT %s, %s, %s, %s, %s, %s, %s, {clock}, %s FROM e "
                    f"WHERE e.epoch = %s {upsert} RETURNING last_seen",
                    (*values, fence_seconds, expected_epoch),
                )
                return cur.fetchone() is not None
        with self.db.transaction(serialized=expected_epoch is not None) as cur:
            if expected_epoch is not None:
                cur.execute("SELECT epoch FROM glc_keyring_changes WHERE id = 1")
                row = cur.fetchone()
                if (int(row[0]) if row else 0) != expected_epoch:
                    return False
            cur.execute(
                f"{columns}VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) {upsert}",
                (*values, time.time(), fence_seconds),
            )
            return True

    def remove_instance(self, instance_id: str, *, retry_seconds: float | None = None) -> None:
        """Deletes an instance's row (on a clean shutdown)."""

        def run() -> None:
            with self.db.transaction() as cur:
                cur.execute(
                    self.db.sql("DELETE FROM glc_instances WHERE instance_id = ?"), (instance_id,)
                )

        self.db.retry(run, budget_seconds=retry_seconds)

    def instances(self) -> list[InstanceRecord]:
        """Every registered instance, most recently seen first."""
        return self.instances_and_clock()[1]

    def instances_and_clock(self) -> tuple[float, list[InstanceRecord]]:
        """The store's clock now (UNIX seconds) and every registered instance.

        On PostgreSQL the clock is the database's, the one ``last_seen`` is written with.
        """

        def run() -> tuple[float, list[InstanceRecord]]:
            with self.db.transaction() as cur:
                cur.execute(
                    "SELECT instance_id, host, pid, epoch, primary_version, min_version, "
                    "started_at, last_seen, fence_seconds FROM glc_instances "
                    "ORDER BY last_seen DESC"
                )
                rows = [
                    InstanceRecord(
                        str(i), str(h), int(p), int(e), int(pv), int(mv), float(s), float(t),
                        float(f),
                    )
                    for i, h, p, e, pv, mv, s, t, f in cur.fetchall()
                ]  # fmt: skip
                if self.db.dialect == "postgresql":
                    cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::double precision")
                    now = float(cur.fetchone()[0])
                else:
                    now = time.time()
                return now, rows

        return self.db.retry(run)

    def live_instances(self, window_seconds: float) -> list[InstanceRecord]:
        """Instances whose last heartbeat is recent enough to count them alive.

        An instance is alive for ``window_seconds`` after its last heartbeat, or for its own
        recorded fence bound plus two seconds when that is longer: it may seal on its last
        confirmed view that long, so no retirement may count it dead sooner.
        """
        now, rows = self.instances_and_clock()
        return [i for i in rows if now - i.last_seen < max(window_seconds, i.fence_seconds + 2.0)]

    @idempotent
    def prune_instances(self, older_than: float) -> int:
        """Deletes rows of instances not seen since ``older_than`` (UNIX seconds)."""
        with self.db.transaction() as cur:
            cur.execute(self.db.sql("DELETE FROM glc_instances WHERE last_seen < ?"), (older_than,))
            return int(cur.rowcount)
