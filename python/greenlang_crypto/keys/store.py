"""The key store: key versions with states, stored (wrapped) DEKs, index keys and instances.

Two backends share one schema and one implementation over DB-API: SQLite (stdlib ``sqlite3``,
the embedded default) and PostgreSQL (``psycopg``). :class:`KeyStore` is the one entry the
keyring, the service and the tools use; each kind of row lives in a module of its own, all on
the store's :class:`~greenlang_crypto.keys.connection.Database`:

- :mod:`~greenlang_crypto.keys.versions`: key versions, wrapping-key history, stored DEKs;
- :mod:`~greenlang_crypto.keys.index_key_store`: blind-index root keys;
- :mod:`~greenlang_crypto.keys.instances`: service instances (heartbeats, liveness);
- :mod:`~greenlang_crypto.keys.changes`: the change counter (epoch) and NOTIFY;
- :mod:`~greenlang_crypto.keys.branch_store`: branch keys (used through ``BranchKeys``);
- :mod:`~greenlang_crypto.keys.erasures`: tenant erasures and tombstones of erased keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from greenlang_crypto._db import pg_dsn, schema_name
from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.keys.changes import NOTIFY_CHANNEL, KeyringChanges
from greenlang_crypto.keys.connection import Database, sqlite_connector
from greenlang_crypto.keys.erasures import TenantErasures
from greenlang_crypto.keys.index_key_store import IndexKeyRecord, IndexKeyStore
from greenlang_crypto.keys.instances import InstanceRecord, InstanceStore
from greenlang_crypto.keys.jobs import unfinished_job_ranges
from greenlang_crypto.keys.versions import (
    KEY_STATES,
    DekRecord,
    KeyVersion,
    KeyVersions,
    StoredDeks,
    WrappingKeyRecord,
)

if TYPE_CHECKING:
    from greenlang_crypto.keys.pgpool import PgPool

__all__ = [
    "KEY_STATES",
    "NOTIFY_CHANNEL",
    "DekRecord",
    "IndexKeyRecord",
    "InstanceRecord",
    "KeyStore",
    "KeyVersion",
    "WrappingKeyRecord",
    "open_key_store",
]


class KeyStore:
    """Key versions, stored DEKs, index keys and instances over SQLite or PostgreSQL.

    Use :func:`open_key_store` to build one from a URL.

    Args:
        connect: Without a pool: opens a connection (one per thread).
        dialect: ``sqlite`` or ``postgresql``.
        description: A redacted description for ``repr``.
        schema: PostgreSQL schema of the tables.
        pool: PostgreSQL only: the process's connection pool.
        retry_seconds: How long idempotent calls keep retrying an unreachable database
            before raising :class:`~greenlang_crypto.exceptions.KeyStoreUnavailableError`.
    """

    #: The connection layer a store is built on (a subclass may run its own transactions).
    database_type: ClassVar[type[Database]] = Database

    def __init__(
        self,
        connect: Any,
        dialect: str,
        description: str,
        *,
        schema: str = "encryption",
        pool: PgPool | None = None,
        retry_seconds: float = 10.0,
    ) -> None:
        #: The connections and transactions every kind of row runs on.
        self.db = self.database_type(
            connect, dialect, description, schema=schema, pool=pool, retry_seconds=retry_seconds
        )
        #: The change counter (epoch) every key-state change counts on.
        self.changes = KeyringChanges(self.db)
        self._versions = KeyVersions(self.db, self.changes)
        self._deks = StoredDeks(self.db)
        self._index_keys = IndexKeyStore(self.db, self.changes)
        self._instances = InstanceStore(self.db)
        #: Tenant erasures and the tombstones of erased keys.
        self.erasures = TenantErasures(self.db, self.changes)
        #: PostgreSQL only: the DSN a keyring uses for its LISTEN connection.
        self.listen_dsn: str | None = None
        #: PostgreSQL only: the DSN points at a transaction-mode pooler (LISTEN cannot work).
        self.transaction_pooler = bool(pool is not None and pool.transaction_pooler)
        self.db.retry(self.db.migrate)

    def __repr__(self) -> str:
        return f"KeyStore({self.db.description})"

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.db.dialect

    @property
    def retry_seconds(self) -> float:
        """How long idempotent calls keep retrying an unreachable database."""
        return self.db.retry_seconds

    @retry_seconds.setter
    def retry_seconds(self, value: float) -> None:
        self.db.retry_seconds = value

    def pool_connections(self) -> int:
        """PostgreSQL connections this process holds for the store now (0 on SQLite)."""
        return self.db.pool_connections()

    def close(self) -> None:
        """Closes every connection this store opened (in any thread); never raises."""
        self.db.close()

    # -- change counter (epoch) -------------------------------------------------------

    def notify(self, channel: str) -> None:
        """Sends a notification on ``channel`` (see :meth:`KeyringChanges.notify`)."""
        self.changes.notify(channel)

    def epoch(self) -> int:
        """The key-state change counter (rises with every rotation, retirement, rewrap...)."""
        return self.changes.epoch()

    # -- key versions -------------------------------------------------------------------

    def versions(self) -> list[KeyVersion]:
        """All key versions, ascending."""
        return self._versions.versions()

    def min_decryption_version(self) -> int:
        """The lowest version allowed to decrypt (1 when never raised)."""
        return self._versions.min_decryption_version()

    def add_primary_version(self, provider: str, wrapping_key_id: str) -> KeyVersion:
        """Adds version N+1 as primary; the previous primary becomes ``active``."""
        return self._versions.add_primary_version(provider, wrapping_key_id)

    def add_first_version(self, provider: str, wrapping_key_id: str) -> bool:
        """Adds version 1 unless a version exists; returns whether this call added it."""
        return self._versions.add_first_version(provider, wrapping_key_id)

    def set_wrapping_key(self, version: int, wrapping_key_id: str) -> None:
        """Points a version at a new wrapping key (see :meth:`KeyVersions.set_wrapping_key`)."""
        self._versions.set_wrapping_key(version, wrapping_key_id)

    def wrapping_keys(self) -> list[WrappingKeyRecord]:
        """Every wrapping key any version ever had (destroyed ones included), by version."""
        return self._versions.wrapping_keys()

    def destroy_wrapping_key(self, wrapping_key_id: str) -> int:
        """Marks a wrapping key destroyed; returns the number of history rows marked.

        Raises:
            KeyStateError: A key version, stored DEK or index key still uses it.
        """
        return self._versions.destroy_wrapping_key(wrapping_key_id)

    def retire_below(self, min_version: int) -> int:
        """Raises the minimum decryption version; returns the minimum in force afterwards.

        Raises:
            KeyStateError: ``min_version`` would retire the primary version.
        """
        return self._versions.retire_below(min_version)

    # -- stored DEKs --------------------------------------------------------------------

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
            TenantErasingError: The context's tenant is being erased.
        """
        return self._deks.insert_dek(
            key_version, provider, wrapping_key_id, wrapped, context, context_digest
        )

    def record_usage(
        self, usage: dict[int, tuple[int, int]], *, retry_seconds: float | None = None
    ) -> None:
        """Stores the messages and bytes sealed under each DEK (counters only grow).

        ``retry_seconds`` overrides the store's retry bound (a shutdown does not wait long).
        """
        self._deks.record_usage(usage, retry_seconds=retry_seconds)

    def usage_by_version(self) -> dict[int, tuple[int, int, int]]:
        """Per key version: stored DEKs, messages sealed and bytes sealed (as last flushed)."""
        return self._deks.usage_by_version()

    def get_dek(self, dek_id: int) -> DekRecord | None:
        """Loads one stored DEK row (None when absent or not a valid id).

        Raises:
            DataErasedError: The DEK was erased with its tenant.
        """
        return self._deks.get_dek(dek_id)

    def iter_deks(self, batch_size: int = 500) -> Iterator[list[DekRecord]]:
        """Yields all stored DEKs in batches ordered by id (keyset pagination)."""
        return self._deks.iter_deks(batch_size)

    def replace_wrapped(
        self, dek_id: int, old_wrapped: bytes, new_wrapped: bytes, wrapping_key_id: str
    ) -> bool:
        """Compare-and-swap of a DEK's wrapped form; returns whether this call updated it."""
        return self._deks.replace_wrapped(dek_id, old_wrapped, new_wrapped, wrapping_key_id)

    def count_deks_by_version(self) -> dict[int, int]:
        """Stored DEKs per key version."""
        return self._deks.count_deks_by_version()

    def delete_deks_below(self, min_version: int) -> int:
        """Deletes stored DEKs of versions below ``min_version``; returns the count."""
        return self._deks.delete_deks_below(min_version)

    # -- blind-index root keys ----------------------------------------------------------

    def index_keys(self) -> list[IndexKeyRecord]:
        """All index key versions, ascending."""
        return self._index_keys.index_keys()

    def add_index_key(
        self, provider: str, wrapping_key_id: str, wrapped: bytes, *, first: bool = False
    ) -> int:
        """Adds index key version N+1 as primary (``first``: only if there is none yet)."""
        return self._index_keys.add_index_key(provider, wrapping_key_id, wrapped, first=first)

    def set_index_key_state(self, version: int, state: str) -> None:
        """Sets the state of an index key version (``active`` or ``retired``)."""
        self._index_keys.set_index_key_state(version, state)

    def replace_index_wrapped(
        self, version: int, old_wrapped: bytes, new_wrapped: bytes, wrapping_key_id: str
    ) -> bool:
        """Compare-and-swap of an index root key's wrapped form."""
        return self._index_keys.replace_index_wrapped(
            version, old_wrapped, new_wrapped, wrapping_key_id
        )

    # -- the rotation autopilot's last step ----------------------------------------------

    def record_autopilot_step(
        self, status: str, reasons: list[str], runner: str, finished_at: float
    ) -> None:
        """Keeps the outcome of the autopilot's last step (one row, replaced each step)."""
        with self.db.transaction() as cur:
            cur.execute(
                self.db.sql(
                    "INSERT INTO glc_autopilot_state (name, status, reasons, runner, "
                    "finished_at) VALUES ('last', ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
                    "SET status = excluded.status, reasons = excluded.reasons, "
                    "runner = excluded.runner, finished_at = excluded.finished_at"
                ),
                (status, json.dumps(reasons), runner, finished_at),
            )

    def last_autopilot_step(self) -> dict[str, Any] | None:
        """The autopilot's last step: ``status``, ``reasons``, ``runner``, ``finished_at``."""
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT status, reasons, runner, finished_at FROM glc_autopilot_state "
                "WHERE name = 'last'"
            )
            row = cur.fetchone()
        if row is None:
            return None
        return {
            "status": str(row[0]),
            "reasons": [str(r) for r in json.loads(row[1])],
            "runner": str(row[2]),
            "finished_at": float(row[3]),
        }

    # -- instances (fleet) ----------------------------------------------------------------

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
        """Registers an instance or refreshes its row (see :meth:`InstanceStore.heartbeat`).

        With ``expected_epoch`` the write is a confirmation, made only while the change
        counter still equals it; returns whether the row was written.
        """
        return self._instances.heartbeat(
            instance_id,
            host=host,
            pid=pid,
            epoch=epoch,
            primary_version=primary_version,
            min_version=min_version,
            started_at=started_at,
            expected_epoch=expected_epoch,
            fence_seconds=fence_seconds,
        )

    def remove_instance(self, instance_id: str, *, retry_seconds: float | None = None) -> None:
        """Deletes an instance's row (on a clean shutdown)."""
        self._instances.remove_instance(instance_id, retry_seconds=retry_seconds)

    def instances(self) -> list[InstanceRecord]:
        """Every registered instance, most recently seen first."""
        return self._instances.instances()

    def instances_and_clock(self) -> tuple[float, list[InstanceRecord]]:
        """The store's clock now (UNIX seconds) and every registered instance."""
        return self._instances.instances_and_clock()

    def live_instances(self, window_seconds: float) -> list[InstanceRecord]:
        """Instances whose last heartbeat is recent enough to count them alive."""
        return self._instances.live_instances(window_seconds)

    def prune_instances(self, older_than: float) -> int:
        """Deletes rows of instances not seen since ``older_than`` (UNIX seconds)."""
        return self._instances.prune_instances(older_than)

    # -- re-encryption jobs ---------------------------------------------------------------

    def unfinished_job_ranges(self) -> int:
        """Ranges of re-encryption jobs not yet done (0 when no job table exists)."""
        return self.db.retry(lambda: unfinished_job_ranges(self.db))


def open_key_store(
    url: str,
    *,
    schema: str = "encryption",
    pool_size: int = 4,
    transaction_pooler: bool = False,
    retry_seconds: float = 10.0,
) -> KeyStore:
    """Opens a key store from ``sqlite:///path`` or ``postgresql://...``.

    On PostgreSQL the tables live in ``schema`` (default ``encryption``, where the V011 and
    V012 migrations create them); a store created in ``public`` before V012 is moved
    there on first open. SQLite has no schemas.

    Args:
        url: The store's URL.
        schema: PostgreSQL schema of the tables.
        pool_size: PostgreSQL: most connections this process holds for the store.
        transaction_pooler: PostgreSQL: the URL points at PgBouncer (or another pooler) in
            transaction mode.
        retry_seconds: How long idempotent calls retry an unreachable database.

    Raises:
        ConfigurationError: Unknown scheme, the PostgreSQL driver is not installed, or the
            SQLite file is damaged.
    """
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        connect_sqlite = sqlite_connector(path)
        if path != ":memory:":
            connect_sqlite().close()  # the file exists with its mode before anything else
        return KeyStore(connect_sqlite, "sqlite", f"sqlite:///{path}", retry_seconds=retry_seconds)
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        dsn = pg_dsn(url)
        schema = schema_name(schema, "key store")
        # Table names are written into each statement with their schema, never through a
        # session's search_path: that also works through a transaction-mode pooler, and never
        # resolves to a stale copy elsewhere on the search path.
        from greenlang_crypto.keys.pgpool import PgPool

        pool = PgPool(dsn, schema=schema, size=pool_size, transaction_pooler=transaction_pooler)
        host = dsn.split("@")[-1]
        store = KeyStore(
            None,
            "postgresql",
            f"postgresql://…@{host}",
            schema=schema,
            pool=pool,
            retry_seconds=retry_seconds,
        )
        # Through a transaction-mode pooler LISTEN cannot work: the keyring polls.
        store.listen_dsn = None if transaction_pooler else dsn
        return store
    raise ConfigurationError("key store URL must start with sqlite:/// or postgresql://")
