"""The key store: key versions with states, and stored (wrapped) DEKs.

Two backends share one schema and one implementation over DB-API: SQLite (stdlib ``sqlite3``,
the embedded default) and PostgreSQL (``psycopg``). A stored DEK row is committed before any
ciphertext that references it is returned, so nothing is ever written that cannot be read back.
Rows hold only wrapped DEKs, key ids, the (non-secret) encryption context and counters.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from greenlang_crypto import _forks
from greenlang_crypto._core import random_bytes
from greenlang_crypto._db import (
    open_sqlite,
    pg_dsn,
    placeholders,
    run_ddl,
    schema_name,
)
from greenlang_crypto.exceptions import (
    ConfigurationError,
    KeyStateError,
    KeyStoreUnavailableError,
)
from greenlang_crypto.keys.pgpool import PgPool, retrying

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

#: Key version states. ``primary`` encrypts; ``active`` and ``decrypt_only`` decrypt;
#: ``retired`` versions are below the minimum decryption version and refuse to decrypt.
KEY_STATES = ("primary", "active", "decrypt_only", "retired")

_T = TypeVar("_T")
_P = ParamSpec("_P")


def _idempotent(
    method: Callable[Concatenate[KeyStore, _P], _T],
) -> Callable[Concatenate[KeyStore, _P], _T]:
    """Retries a store method that is safe to repeat while the database is unreachable.

    Reads, upserts and counters that only grow: running one twice changes nothing more
    than running it once. Bounded by the store's ``retry_seconds``.
    """

    @functools.wraps(method)
    def wrapper(store: KeyStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return store._retry(lambda: method(store, *args, **kwargs))

    return wrapper


#: Advisory lock id serializing key-state changes and schema creation across processes.
_PG_LOCK = 7304118433

#: The PostgreSQL channel on which every key-state change is announced (LISTEN/NOTIFY).
NOTIFY_CHANNEL = "glc_keyring"


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


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str, dialect: str) -> str:
    # Cached: the same few statements every time, and the cached string is the same object,
    # so the schema qualification's cache finds it without rehashing.
    return placeholders(sql, dialect)


def _damaged(description: str) -> ConfigurationError:
    """The error for a SQLite file that is not a database, or a malformed one.

    Only the exact ``sqlite3.DatabaseError`` means that (its subclasses are other failures);
    waiting will not help: the file must be restored.
    """
    return ConfigurationError(f"the key store {description} is damaged or not a database")


def _sqlite_outage(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite failed to reach its file rather than refusing the statement itself.

    Locked past the busy timeout, an I/O error, a file that cannot be opened or written.
    """
    text = str(exc).lower()
    return any(w in text for w in ("locked", "unable to open", "disk i/o", "readonly", "busy"))


class KeyStore:
    """Key versions and stored DEKs over SQLite or a PostgreSQL connection pool.

    Use :func:`open_key_store` to build one from a URL.

    Args:
        connect: SQLite only: opens a connection (one per thread).
        dialect: ``sqlite`` or ``postgresql``.
        description: A redacted description for ``repr``.
        schema: PostgreSQL schema of the tables.
        pool: PostgreSQL only: the process's connection pool.
        retry_seconds: How long idempotent calls keep retrying an unreachable database
            before raising :class:`~greenlang_crypto.exceptions.KeyStoreUnavailableError`.
    """

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
        self._connect = connect
        self._dialect = dialect
        self._schema = schema
        self._description = description
        self._pool = pool
        self.retry_seconds = retry_seconds
        self._local = threading.local()
        # SQLite: every connection opened by any thread, so close() can release them all.
        self._all_conns: list[Any] = []
        self._conns_lock = threading.Lock()
        #: PostgreSQL only: the DSN a keyring uses for its LISTEN connection.
        self.listen_dsn: str | None = None
        #: PostgreSQL only: the DSN points at a transaction-mode pooler (LISTEN cannot work).
        self.transaction_pooler = bool(pool is not None and pool.transaction_pooler)
        retrying(self._migrate, budget_seconds=retry_seconds)
        _forks.register(self, _forks.STORE)

    def _after_fork_in_child(self) -> None:
        # The parent's connections share their sockets with the parent: dropped, never used
        # or closed here; the child opens its own on first use (the pool re-arms itself).
        self._all_conns = []
        self._conns_lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"KeyStore({self._description})"

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._dialect

    def pool_connections(self) -> int:
        """PostgreSQL connections this process holds for the store now (0 on SQLite)."""
        return 0 if self._pool is None else self._pool.connections()

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._conns_lock:
                self._all_conns.append(conn)
        return conn

    def _sql(self, sql: str) -> str:
        return _placeholders(sql, self._dialect)

    def _retry(self, fn: Callable[[], _T]) -> _T:
        """Runs idempotent work, retrying an unreachable database within the bound."""
        return retrying(fn, budget_seconds=self.retry_seconds)

    def _tx(self, *, serialized: bool = False) -> AbstractContextManager[Any]:
        """One transaction.

        ``serialized`` ones (key-state changes, schema creation) run one at a time across
        every process sharing the store, so read-then-write steps such as "next version =
        max + 1" cannot interleave.

        Raises:
            KeyStoreUnavailableError: The database cannot be reached (cause chained). A
                failure while committing leaves it unknown whether the change was made.
        """
        if self._pool is not None:
            return self._pool.transaction(lock_id=_PG_LOCK if serialized else None)
        return self._sqlite_tx(serialized=serialized)

    def _one(self) -> AbstractContextManager[Any]:
        """A block of exactly one statement: on PostgreSQL it needs no BEGIN or COMMIT."""
        if self._pool is not None:
            return self._pool.transaction(single=True)
        return self._sqlite_tx(serialized=False)

    @contextmanager
    def _sqlite_tx(self, *, serialized: bool) -> Iterator[Any]:
        conn = self._open_sqlite()
        cur = conn.cursor()
        try:
            if serialized:
                # Take the write lock up front (waiting up to the busy timeout) instead of
                # upgrading a read lock later, which fails at once under contention.
                cur.execute("BEGIN IMMEDIATE")
            yield cur
            conn.commit()
        except BaseException as exc:
            with suppress(sqlite3.Error):
                conn.rollback()
            if isinstance(exc, sqlite3.OperationalError) and _sqlite_outage(exc):
                raise KeyStoreUnavailableError(
                    f"the key store is unavailable ({type(exc).__name__})"
                ) from exc
            if type(exc) is sqlite3.DatabaseError:
                raise _damaged(self._description) from exc
            raise
        finally:
            cur.close()

    def _open_sqlite(self) -> Any:
        try:
            return self._conn()
        except (OSError, sqlite3.OperationalError) as exc:
            raise KeyStoreUnavailableError(
                f"the key store cannot be opened ({type(exc).__name__})"
            ) from exc

    def _migrate(self) -> None:
        """Creates or upgrades the key store tables from the packaged migrations' DDL."""
        # Serialized: concurrent CREATE TABLE IF NOT EXISTS race on PostgreSQL's catalog.
        with self._tx(serialized=True) as cur:
            # The packaged DDL names its schema itself (and indexes must stay unqualified).
            raw = getattr(cur, "raw", cur)
            run_ddl(raw, "keystore", self._dialect, schema=self._schema, lock_id=_PG_LOCK)

    def close(self) -> None:
        """Closes every connection this store opened (in any thread); never raises."""
        if self._pool is not None:
            self._pool.close()
        with self._conns_lock:
            conns, self._all_conns = self._all_conns, []
        for conn in conns:
            with suppress(Exception):  # already dead: nothing left to release
                conn.close()
        self._local = threading.local()

    # -- change counter (epoch) -------------------------------------------------------

    def _bump(self, cur: Any) -> None:
        """Counts one key-state change, in the transaction that makes it.

        Every instance polls this counter (one indexed single-row read), and on PostgreSQL
        the NOTIFY wakes its listeners at commit, so no instance has to re-read the keyring
        to find out that nothing changed.
        """
        cur.execute(
            self._sql(
                "UPDATE glc_keyring_changes SET epoch = epoch + 1, changed_at = ? WHERE id = 1"
            ),
            (time.time(),),
        )
        if self._dialect == "postgresql":
            cur.execute(f"NOTIFY {NOTIFY_CHANNEL}")

    def notify(self, channel: str) -> None:
        """Sends a notification on ``channel`` (PostgreSQL; a no-op on SQLite).

        ``channel`` is a plain identifier the caller made (it is written into the
        statement: NOTIFY takes no parameter).
        """
        if self._pool is None:
            return
        if not channel.isidentifier() or not channel.isascii():
            raise ValueError("channel must be a plain identifier")
        with self._one() as cur:
            cur.execute(f"NOTIFY {channel}")

    @_idempotent
    def epoch(self) -> int:
        """The key-state change counter (rises with every rotation, retirement, rewrap...)."""
        with self._one() as cur:
            cur.execute("SELECT epoch FROM glc_keyring_changes WHERE id = 1")
            row = cur.fetchone()
            return int(row[0]) if row else 0

    # -- key versions -------------------------------------------------------------------

    @_idempotent
    def versions(self) -> list[KeyVersion]:
        """All key versions, ascending."""
        with self._one() as cur:
            cur.execute(
                "SELECT version, state, provider, wrapping_key_id, created_at, rotated_at "
                "FROM glc_key_versions ORDER BY version"
            )
            return [KeyVersion(*row) for row in cur.fetchall()]

    @_idempotent
    def min_decryption_version(self) -> int:
        """The lowest version allowed to decrypt (1 when never raised)."""
        with self._one() as cur:
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
        with self._tx(serialized=True) as cur:
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM glc_key_versions")
            version = int(cur.fetchone()[0]) + 1
            if only_if_empty and version > 1:
                return None
            cur.execute(
                self._sql(
                    "UPDATE glc_key_versions SET state = 'active', rotated_at = ? "
                    "WHERE state = 'primary'"
                ),
                (now,),
            )
            cur.execute(
                self._sql(
                    "INSERT INTO glc_key_versions "
                    "(version, state, provider, wrapping_key_id, created_at) "
                    "VALUES (?, 'primary', ?, ?, ?)"
                ),
                (version, provider, wrapping_key_id, now),
            )
            if version == 1:
                cur.execute(
                    self._sql("INSERT INTO glc_keyring (id, min_decryption_version) VALUES (1, 1)")
                )
            self._add_wrapping_history(cur, version, provider, wrapping_key_id, now)
            self._bump(cur)
        return KeyVersion(version, "primary", provider, wrapping_key_id, now, None)

    def _add_wrapping_history(
        self, cur: Any, version: int, provider: str, wrapping_key_id: str, now: float
    ) -> None:
        cur.execute(
            self._sql(
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
        with self._tx(serialized=True) as cur:
            cur.execute(
                self._sql("SELECT provider FROM glc_key_versions WHERE version = ?"), (version,)
            )
            row = cur.fetchone()
            if row is None:
                raise KeyStateError(f"key version {version} does not exist")
            cur.execute(
                self._sql("UPDATE glc_key_versions SET wrapping_key_id = ? WHERE version = ?"),
                (wrapping_key_id, version),
            )
            self._add_wrapping_history(cur, version, str(row[0]), wrapping_key_id, time.time())
            self._bump(cur)

    @_idempotent
    def wrapping_keys(self) -> list[WrappingKeyRecord]:
        """Every wrapping key any version ever had (destroyed ones included), by version."""
        with self._one() as cur:
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
        with self._tx(serialized=True) as cur:
            for table in ("glc_key_versions", "glc_deks", "glc_index_keys", "glc_branch_keys"):
                cur.execute(
                    self._sql(f"SELECT 1 FROM {table} WHERE wrapping_key_id = ? LIMIT 1"),  # noqa: S608
                    (wrapping_key_id,),
                )
                if cur.fetchone() is not None:
                    raise KeyStateError(f"the wrapping key is still in use ({table})")
            cur.execute(
                self._sql(
                    "UPDATE glc_wrapping_keys SET destroyed_at = ? "
                    "WHERE wrapping_key_id = ? AND destroyed_at IS NULL"
                ),
                (time.time(), wrapping_key_id),
            )
            marked = int(cur.rowcount)
            if marked:
                self._bump(cur)
            return marked

    def retire_below(self, min_version: int) -> int:
        """Raises the minimum decryption version and marks older versions ``retired``.

        The minimum only ever rises: a lower ``min_version`` than the current one changes
        nothing. Returns the minimum in force afterwards.

        Raises:
            KeyStateError: ``min_version`` would retire the primary version.
        """
        with self._tx(serialized=True) as cur:
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
                self._sql(
                    "UPDATE glc_keyring SET min_decryption_version = ? "
                    "WHERE id = 1 AND min_decryption_version < ?"
                ),
                (min_version, min_version),
            )
            self._bump(cur)
            cur.execute(
                self._sql("UPDATE glc_key_versions SET state = 'retired' WHERE version < ?"),
                (min_version,),
            )
        return min_version

    # -- stored DEKs --------------------------------------------------------------------

    @_idempotent
    def insert_dek(
        self,
        key_version: int,
        provider: str,
        wrapping_key_id: str,
        wrapped: bytes,
        context: dict[str, str],
        context_digest: bytes,
    ) -> int:
        """Stores a wrapped DEK and commits; returns its new random 63-bit id."""
        now = time.time()
        for _ in range(5):
            # Random ids (not a sequence) so ids reveal neither volume nor order.
            dek_id = int.from_bytes(random_bytes(8), "big") >> 1
            try:
                with self._one() as cur:
                    cur.execute(
                        self._sql(
                            "INSERT INTO glc_deks (dek_id, key_version, provider, "
                            "wrapping_key_id, wrapped, context_json, context_digest, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
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
                        ),
                    )
                return dek_id
            except Exception as exc:  # an id collision retries; anything else propagates
                if "unique" not in str(exc).lower() and "duplicate" not in str(exc).lower():
                    raise
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
            with self._tx() as cur:
                for dek_id, (messages, nbytes) in usage.items():
                    cur.execute(
                        self._sql(
                            "UPDATE glc_deks SET "
                            "messages = CASE WHEN messages < ? THEN ? ELSE messages END, "
                            "bytes = CASE WHEN bytes < ? THEN ? ELSE bytes END WHERE dek_id = ?"
                        ),
                        (messages, messages, nbytes, nbytes, dek_id),
                    )

        budget = self.retry_seconds if retry_seconds is None else retry_seconds
        retrying(write, budget_seconds=budget)

    @_idempotent
    def usage_by_version(self) -> dict[int, tuple[int, int, int]]:
        """Per key version: stored DEKs, messages sealed and bytes sealed (as last flushed)."""
        with self._one() as cur:
            cur.execute(
                "SELECT key_version, COUNT(*), COALESCE(SUM(messages), 0), "
                "COALESCE(SUM(bytes), 0) FROM glc_deks GROUP BY key_version"
            )
            return {int(v): (int(n), int(m), int(b)) for v, n, m, b in cur.fetchall()}

    @_idempotent
    def get_dek(self, dek_id: int) -> DekRecord | None:
        """Loads one stored DEK row (None when absent).

        ``dek_id`` comes from an envelope header, so any 64-bit value can arrive here; ids
        are 63-bit (see :meth:`insert_dek`), and the databases' signed BIGINT would overflow.
        """
        if not 0 <= dek_id < 2**63:
            return None
        with self._one() as cur:
            cur.execute(
                self._sql(
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
            with self._tx() as cur:
                cur.execute(
                    self._sql(
                        "SELECT dek_id FROM glc_deks WHERE dek_id > ? ORDER BY dek_id LIMIT ?"
                    ),
                    (last, batch_size),
                )
                ids = [int(r[0]) for r in cur.fetchall()]
            if not ids:
                return
            records = [r for r in (self.get_dek(i) for i in ids) if r is not None]
            yield records
            last = ids[-1]

    def replace_wrapped(
        self, dek_id: int, old_wrapped: bytes, new_wrapped: bytes, wrapping_key_id: str
    ) -> bool:
        """Compare-and-swap of a DEK's wrapped form; returns whether this call updated it."""
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "UPDATE glc_deks SET wrapped = ?, wrapping_key_id = ?, rewrapped_at = ? "
                    "WHERE dek_id = ? AND wrapped = ?"
                ),
                (new_wrapped, wrapping_key_id, time.time(), dek_id, old_wrapped),
            )
            return bool(cur.rowcount == 1)

    @_idempotent
    def count_deks_by_version(self) -> dict[int, int]:
        """Stored DEKs per key version."""
        with self._one() as cur:
            cur.execute("SELECT key_version, COUNT(*) FROM glc_deks GROUP BY key_version")
            return {int(v): int(n) for v, n in cur.fetchall()}

    # -- blind-index root keys ----------------------------------------------------------

    @_idempotent
    def index_keys(self) -> list[IndexKeyRecord]:
        """All index key versions, ascending."""
        with self._one() as cur:
            cur.execute(
                "SELECT version, state, provider, wrapping_key_id, wrapped "
                "FROM glc_index_keys ORDER BY version"
            )
            return [IndexKeyRecord(int(v), st, p, w, bytes(b)) for v, st, p, w, b in cur.fetchall()]

    def add_index_key(self, provider: str, wrapping_key_id: str, wrapped: bytes) -> int:
        """Adds index key version N+1 as primary; the previous primary becomes ``active``."""
        with self._tx(serialized=True) as cur:
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM glc_index_keys")
            version = int(cur.fetchone()[0]) + 1
            cur.execute("UPDATE glc_index_keys SET state = 'active' WHERE state = 'primary'")
            cur.execute(
                self._sql(
                    "INSERT INTO glc_index_keys (version, state, provider, wrapping_key_id, "
                    "wrapped, created_at) VALUES (?, 'primary', ?, ?, ?, ?)"
                ),
                (version, provider, wrapping_key_id, wrapped, time.time()),
            )
            self._bump(cur)
        return version

    def set_index_key_state(self, version: int, state: str) -> None:
        """Sets the state of an index key version (``active`` or ``retired``)."""
        if state not in ("active", "retired"):
            raise KeyStateError("index key state must be active or retired")
        with self._tx(serialized=True) as cur:
            cur.execute(self._sql("SELECT state FROM glc_index_keys WHERE version = ?"), (version,))
            row = cur.fetchone()
            if row is None:
                raise KeyStateError(f"index key version {version} does not exist")
            if row[0] == "primary":
                raise KeyStateError("cannot retire the primary index key")
            cur.execute(
                self._sql("UPDATE glc_index_keys SET state = ? WHERE version = ?"),
                (state, version),
            )
            self._bump(cur)

    def replace_index_wrapped(
        self, version: int, old_wrapped: bytes, new_wrapped: bytes, wrapping_key_id: str
    ) -> bool:
        """Compare-and-swap of an index root key's wrapped form."""
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "UPDATE glc_index_keys SET wrapped = ?, wrapping_key_id = ? "
                    "WHERE version = ? AND wrapped = ?"
                ),
                (new_wrapped, wrapping_key_id, version, old_wrapped),
            )
            changed = bool(cur.rowcount == 1)
            if changed:
                self._bump(cur)
            return changed

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
        if self._dialect == "postgresql":
            clock = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
            # One statement in a transaction of its own: the epoch check, the share lock and
            # the write commit together, with no client round trip in between.
            with self._one() as cur:
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
        with self._tx(serialized=expected_epoch is not None) as cur:
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
            with self._tx() as cur:
                cur.execute(
                    self._sql("DELETE FROM glc_instances WHERE instance_id = ?"), (instance_id,)
                )

        retrying(run, budget_seconds=self.retry_seconds if retry_seconds is None else retry_seconds)

    def instances(self) -> list[InstanceRecord]:
        """Every registered instance, most recently seen first."""
        return self.instances_and_clock()[1]

    def instances_and_clock(self) -> tuple[float, list[InstanceRecord]]:
        """The store's clock now (UNIX seconds) and every registered instance.

        On PostgreSQL the clock is the database's, the one ``last_seen`` is written with.
        """

        def run() -> tuple[float, list[InstanceRecord]]:
            with self._tx() as cur:
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
                if self._dialect == "postgresql":
                    cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::double precision")
                    now = float(cur.fetchone()[0])
                else:
                    now = time.time()
                return now, rows

        return self._retry(run)

    def live_instances(self, window_seconds: float) -> list[InstanceRecord]:
        """Instances whose last heartbeat is recent enough to count them alive.

        An instance is alive for ``window_seconds`` after its last heartbeat, or for its own
        recorded fence bound plus two seconds when that is longer: it may seal on its last
        confirmed view that long, so no retirement may count it dead sooner.
        """
        now, rows = self.instances_and_clock()
        return [i for i in rows if now - i.last_seen < max(window_seconds, i.fence_seconds + 2.0)]

    @_idempotent
    def prune_instances(self, older_than: float) -> int:
        """Deletes rows of instances not seen since ``older_than`` (UNIX seconds)."""
        with self._tx() as cur:
            cur.execute(self._sql("DELETE FROM glc_instances WHERE last_seen < ?"), (older_than,))
            return int(cur.rowcount)

    @_idempotent
    def unfinished_job_ranges(self) -> int:
        """Ranges of re-encryption jobs not yet done (0 when no job table exists)."""
        with self._tx() as cur:
            if self._dialect == "sqlite":
                cur.execute(
                    "SELECT name FROM sqlite_master "
                    "WHERE type = 'table' AND name = 'glc_job_ranges'"
                )
                tables = ["glc_job_ranges"] if cur.fetchone() else []
            else:
                tables = []
                # Jobs keep their ranges in their state schema: the migrations' own by
                # default, the key store's, or public for jobs of older releases.
                candidates = {f"{self._schema}.glc_job_ranges", "encryption.glc_job_ranges"}
                for name in [*sorted(candidates), "public.glc_job_ranges"]:
                    cur.execute("SELECT to_regclass(%s)::text", (name,))
                    found = cur.fetchone()[0]
                    if found is not None and found not in tables:
                        tables.append(found)
            total = 0
            for table in tables:
                cur.execute(f"SELECT COUNT(*) FROM {table} WHERE state <> 'done'")  # noqa: S608
                total += int(cur.fetchone()[0])
            return total

    @_idempotent
    def delete_deks_below(self, min_version: int) -> int:
        """Deletes stored DEKs of versions below ``min_version``; returns the count."""
        with self._tx() as cur:
            cur.execute(self._sql("DELETE FROM glc_deks WHERE key_version < ?"), (min_version,))
            return int(cur.rowcount)


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


@dataclass(frozen=True, slots=True)
class IndexKeyRecord:
    """A blind-index root key version (stored wrapped).

    Attributes:
        version: Index key version.
        state: ``primary`` (writes), ``active`` (lookups only) or ``retired``.
        provider: Provider that wrapped it.
        wrapping_key_id: The wrapping key id.
        wrapped: The wrapped root key.
    """

    version: int
    state: str
    provider: str
    wrapping_key_id: str
    wrapped: bytes


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
    V012 migrations create them); a store an older release created in ``public`` is moved
    there on first open. SQLite has no schemas.

    Args:
        url: The store's URL.
        schema: PostgreSQL schema of the tables.
        pool_size: PostgreSQL: most connections this process holds for the store.
        transaction_pooler: PostgreSQL: the URL points at PgBouncer (or another pooler) in
            transaction mode.
        retry_seconds: How long idempotent calls retry an unreachable database.

    Raises:
        ConfigurationError: Unknown scheme, or the PostgreSQL driver is not installed.
    """
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")

        def connect_sqlite() -> sqlite3.Connection:
            # Each thread uses its own connection (threading.local); close() may run on another
            # thread, which sqlite3's same-thread check would refuse.
            if path == ":memory:":
                return sqlite3.connect(path, timeout=30, check_same_thread=False)
            # 0600 in a 0700 directory whatever the umask (see greenlang_crypto._db).
            try:
                return open_sqlite(path, timeout=30, autocommit=False)
            except sqlite3.DatabaseError as exc:
                if type(exc) is sqlite3.DatabaseError:
                    raise _damaged(f"sqlite:///{path}") from exc
                raise

        if path != ":memory:":
            connect_sqlite().close()  # the file exists with its mode before anything else
        return KeyStore(connect_sqlite, "sqlite", f"sqlite:///{path}", retry_seconds=retry_seconds)
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        dsn = pg_dsn(url)
        schema = schema_name(schema, "key store")
        # Table names are written into each statement with their schema, never through a
        # session's search_path: that also works through a transaction-mode pooler, and never
        # resolves to a stale copy elsewhere on the search path.
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
