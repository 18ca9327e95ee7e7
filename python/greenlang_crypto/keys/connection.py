"""The key store's database: connections, transactions and retries over SQLite or PostgreSQL.

Every module that owns key-store rows (versions and DEKs, index keys, branch keys, instances)
runs its statements through one :class:`Database`. It hides what differs between the two
backends: SQLite keeps one connection per thread and takes its write lock up front for
serialized work; PostgreSQL borrows a connection from the process's pool
(:mod:`greenlang_crypto.keys.pgpool`) and serializes through an advisory lock. Statements are
written once, with ``?`` placeholders, and :meth:`Database.sql` puts them in the dialect's
style.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

from greenlang_crypto import _forks
from greenlang_crypto._db import open_sqlite, placeholders, run_ddl
from greenlang_crypto.exceptions import ConfigurationError, KeyStoreUnavailableError
from greenlang_crypto.keys._retry import retrying

if TYPE_CHECKING:
    from greenlang_crypto.keys.pgpool import PgPool
from greenlang_crypto.sql import schema_marker

__all__ = ["PG_LOCK", "Database", "damaged", "idempotent", "sqlite_connector"]

#: Advisory lock id serializing key-state changes and schema creation across processes.
PG_LOCK = 7304118433

_T = TypeVar("_T")
_P = ParamSpec("_P")


class UsesDatabase(Protocol):
    """An object whose methods run on a :class:`Database` (what :func:`idempotent` wraps)."""

    @property
    def db(self) -> Database:
        """The database the object's rows live in."""
        ...


_S = TypeVar("_S", bound=UsesDatabase)


def idempotent(
    method: Callable[Concatenate[_S, _P], _T],
) -> Callable[Concatenate[_S, _P], _T]:
    """Retries a method that is safe to repeat while the database is unreachable.

    Reads, upserts and counters that only grow: running one twice changes nothing more
    than running it once. Bounded by the database's ``retry_seconds``.
    """

    @functools.wraps(method)
    def wrapper(owner: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return owner.db.retry(lambda: method(owner, *args, **kwargs))

    return wrapper


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str, dialect: str) -> str:
    # Cached: the same few statements every time, and the cached string is the same object,
    # so the schema qualification's cache finds it without rehashing.
    return placeholders(sql, dialect)


def damaged(description: str) -> ConfigurationError:
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


def sqlite_connector(path: str) -> Callable[[], sqlite3.Connection]:
    """A function opening one connection to the SQLite key store at ``path``.

    Each thread uses its own connection; ``close()`` may run on another thread, which
    sqlite3's same-thread check would refuse, so the check is off.
    """

    def connect() -> sqlite3.Connection:
        if path == ":memory:":
            return sqlite3.connect(path, timeout=30, check_same_thread=False)
        # 0600 in a 0700 directory whatever the umask (see greenlang_crypto._db).
        try:
            return open_sqlite(path, timeout=30, autocommit=False)
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError:
                raise damaged(f"sqlite:///{path}") from exc
            raise

    return connect


class Database:
    """Connections and transactions of one key store.

    Args:
        connect: Without a pool: opens a DB-API connection (one per thread).
        dialect: ``sqlite`` or ``postgresql``.
        description: A redacted description for messages and ``repr``.
        schema: PostgreSQL schema of the tables.
        pool: PostgreSQL only: the process's connection pool.
        retry_seconds: How long idempotent work keeps retrying an unreachable database
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
        #: Opens a new connection (used without a pool, once per thread).
        self.connect = connect
        self.dialect = dialect
        self.schema = schema
        self.description = description
        self.pool = pool
        self.retry_seconds = retry_seconds
        self._local = threading.local()
        # Every connection opened by any thread, so close() can release them all.
        self._all_conns: list[Any] = []
        self._conns_lock = threading.Lock()
        _forks.register(self, _forks.STORE)

    def _after_fork_in_child(self) -> None:
        # The parent's connections share their sockets with the parent: dropped, never used
        # or closed here; the child opens its own on first use (the pool re-arms itself).
        self._all_conns = []
        self._conns_lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"Database({self.description})"

    def pool_connections(self) -> int:
        """PostgreSQL connections this process holds now (0 without a pool)."""
        return 0 if self.pool is None else self.pool.connections()

    def connection(self) -> Any:
        """This thread's connection (without a pool), opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
            with self._conns_lock:
                self._all_conns.append(conn)
        return conn

    def sql(self, sql: str) -> str:
        """``sql``, written with ``?`` placeholders, in this dialect's placeholder style."""
        return _placeholders(sql, self.dialect)

    def retry(self, fn: Callable[[], _T], *, budget_seconds: float | None = None) -> _T:
        """Runs idempotent work, retrying an unreachable database within the bound.

        ``budget_seconds`` overrides ``retry_seconds`` (a shutdown does not wait long).
        """
        budget = self.retry_seconds if budget_seconds is None else budget_seconds
        return retrying(fn, budget_seconds=budget)

    def transaction(self, *, serialized: bool = False) -> AbstractContextManager[Any]:
        """One transaction; the block receives its cursor, and it commits when it succeeds.

        ``serialized`` ones (key-state changes, schema creation) run one at a time across
        every process sharing the store, so read-then-write steps such as "next version =
        max + 1" cannot interleave.

        Raises:
            KeyStoreUnavailableError: The database cannot be reached (cause chained). A
                failure while committing leaves it unknown whether the change was made.
            ConfigurationError: The SQLite file is damaged or not a database.
        """
        if self.pool is not None:
            return self.pool.transaction(lock_id=PG_LOCK if serialized else None)
        return self._local_tx(serialized=serialized)

    def one(self) -> AbstractContextManager[Any]:
        """A block of exactly one statement: on PostgreSQL it needs no BEGIN or COMMIT."""
        if self.pool is not None:
            return self.pool.transaction(single=True)
        return self._local_tx(serialized=False)

    @contextmanager
    def _local_tx(self, *, serialized: bool) -> Iterator[Any]:
        conn = self._open()
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
                raise damaged(self.description) from exc
            raise
        finally:
            cur.close()

    def _open(self) -> Any:
        try:
            return self.connection()
        except (OSError, sqlite3.OperationalError) as exc:
            raise KeyStoreUnavailableError(
                f"the key store cannot be opened ({type(exc).__name__})"
            ) from exc

    def migrate(self) -> None:
        """Creates or upgrades the key store tables from the packaged migrations' DDL."""
        marker = schema_marker() if self.dialect == "sqlite" else None
        if marker is not None:
            with self.transaction() as cur:
                cur.execute("PRAGMA user_version")
                if cur.fetchone()[0] == marker:
                    return  # stamped by an earlier open: every table is in place
        # Serialized: concurrent CREATE TABLE IF NOT EXISTS race on PostgreSQL's catalog.
        with self.transaction(serialized=True) as cur:
            # The packaged DDL names its schema itself (and indexes must stay unqualified).
            raw = getattr(cur, "raw", cur)
            run_ddl(raw, "keystore", self.dialect, schema=self.schema, lock_id=PG_LOCK)
            if marker is not None:
                # In the same transaction as the DDL: a file is stamped only once it is whole.
                cur.execute(f"PRAGMA user_version = {int(marker)}")

    def close(self) -> None:
        """Closes every connection this database opened (in any thread); never raises."""
        if self.pool is not None:
            self.pool.close()
        with self._conns_lock:
            conns, self._all_conns = self._all_conns, []
        for conn in conns:
            with suppress(Exception):  # already dead: nothing left to release
                conn.close()
        self._local = threading.local()
