"""One bounded, self-healing pool of PostgreSQL connections per process, for the key store.

A PostgreSQL restart (a maintenance window, a failover) cuts every session. A connection
held for good is then dead for good, so this module never holds one: threads borrow a
connection from a :class:`psycopg_pool.ConnectionPool` for one transaction and give it back.

- **Bounded.** At most ``size`` connections per process, whatever the number of threads
  (a web server's thread pool would otherwise open one each), plus the keyring's LISTEN
  connection, which lives elsewhere.
- **Checked on checkout, without a round trip.** A connection whose socket has become
  readable while idle has been told something (the server's "terminating connection" error,
  then EOF): it is discarded before anyone sends a query on it. A connection cut without a
  word (a network partition) fails on use; the caller's bounded retry then gets a new one.
- **PgBouncer in transaction mode.** Nothing relies on session state: table names are
  schema-qualified in each statement instead of set through ``search_path`` (PgBouncer
  refuses the ``options`` start-up parameter), and no statement is prepared server-side (a
  prepared statement belongs to one server connection, and its name may mean another
  statement on the next one).
- **Typed failures.** An unreachable database surfaces as
  :class:`~greenlang_crypto.exceptions.KeyStoreUnavailableError`, the driver's error chained.
- **Fork.** A forked child never touches the parent's pool (its worker threads do not exist
  in the child and its sockets are the parent's): it builds its own on first use.
"""

from __future__ import annotations

import logging
import re
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any, TypeVar

from greenlang_crypto import _forks
from greenlang_crypto.exceptions import ConfigurationError, KeyStoreUnavailableError
from greenlang_crypto.keys._retry import retrying

__all__ = ["PgPool", "is_outage", "qualify", "retrying"]

_log = logging.getLogger("greenlang_crypto.keystore")

T = TypeVar("T")

#: Pools a forked child left behind: referenced, so that collecting them never runs their
#: close (which would end the parent's sessions through the shared sockets).
_ABANDONED: list[Any] = []

# A table of ours, not already qualified and not the NOTIFY/LISTEN channel of the same name.
_TABLE = re.compile(r"(?<![\w.'])(?<!NOTIFY )(?<!LISTEN )(glc_[a-z_]+)\b")


@lru_cache(maxsize=512)
def qualify(sql: str, schema: str) -> str:
    """``sql`` with every ``glc_*`` table name prefixed by ``schema``.

    Statements are a small fixed set, so the rewrite is cached and costs a dictionary look-up
    per execution.
    """
    return _TABLE.sub(rf"{schema}.\1", sql)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or the session was lost.

    Constraint violations and bad values are not outages: retrying them would fail the same
    way.
    """
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the install
        return False
    if isinstance(exc, psycopg.errors.DataError | psycopg.errors.IntegrityError):
        return False
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return True  # statement or lock timeout: the server is alive but not answering in time
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _lost_prepared_statement(exc: BaseException) -> bool:
    """Whether ``exc`` is a server-side prepared statement missing or defined twice."""
    return type(exc).__name__ in ("InvalidSqlStatementName", "DuplicatePreparedStatement")


def _idle_and_sound(conn: Any) -> None:
    """Pool check on checkout: raises for a connection that must not be handed out.

    An idle connection has nothing to read; a readable socket means the server spoke first
    (an administrator command or a shutdown ended the session) or closed it. The connection
    is closed before raising: the pool takes a connection back as it finds it, and drops it
    only when it is closed or broken.
    """
    import psycopg

    if conn.closed or conn.broken:
        raise psycopg.OperationalError("connection closed")
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        conn.close()
        raise psycopg.OperationalError("the server ended the session")


class _QualifiedCursor:
    """A cursor whose statements name the key store's tables with their schema."""

    __slots__ = ("_cur", "_schema")

    def __init__(self, cur: Any, schema: str) -> None:
        self._cur = cur
        self._schema = schema

    @property
    def raw(self) -> Any:
        """The driver's cursor, for statements that name their objects themselves (DDL)."""
        return self._cur

    def execute(self, sql: str, params: Any = None) -> Any:
        return self._cur.execute(qualify(sql, self._schema), params)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> Any:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def close(self) -> None:
        self._cur.close()


class PgPool:
    """The key store's connections to PostgreSQL: one bounded pool per process.

    Args:
        dsn: libpq connection string or ``postgresql://`` URL.
        schema: Schema of the key store's tables (written into each statement).
        size: Most connections this process holds (the pool grows to it on demand).
        checkout_timeout: Seconds to wait for a connection before the attempt fails.
        transaction_pooler: The DSN points at PgBouncer (or another pooler) in transaction
            mode: prepare no statements server-side.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        size: int = 4,
        checkout_timeout: float = 3.0,
        transaction_pooler: bool = False,
    ) -> None:
        try:
            import psycopg_pool
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "the PostgreSQL key store needs psycopg and psycopg-pool: "
                "pip install 'greenlang-crypto[sqlalchemy]'"
            ) from None
        if size < 1:
            raise ConfigurationError("key_store_pool_size must be at least 1")
        self._factory = psycopg_pool.ConnectionPool
        self.dsn = dsn
        self.schema = schema
        self.size = size
        self.transaction_pooler = transaction_pooler
        self._timeout = checkout_timeout
        self._lock = threading.Lock()
        self._pool: Any = None
        self._closed = False
        # After a checkout timed out, calls fail at once for a moment instead of each
        # waiting out the timeout again (a shutdown during an outage would take seconds).
        self._down_until = 0.0
        _forks.register(self, _forks.STORE)

    def _after_fork_in_child(self) -> None:
        if self._pool is not None:
            _ABANDONED.append(self._pool)
        self._pool = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._closed:
                raise KeyStoreUnavailableError("the key store is closed")
            if self._pool is None:
                self._pool = self._start()
            return self._pool

    def _start(self) -> Any:
        """A new pool with its first connection open.

        Raises:
            psycopg.OperationalError: The server cannot be reached now.
        """
        import psycopg

        # Autocommit: transactions are explicit (BEGIN ... COMMIT), and a one-statement
        # block needs neither.
        kwargs: dict[str, Any] = {
            "connect_timeout": max(1, int(self._timeout + 0.999)),
            "autocommit": True,
            # Never prepared server-side, pooler or not. Behind a transaction-mode pooler the
            # configuration does not mention, a statement prepared on one server connection
            # is executed by name on another, where another client may have prepared the
            # same name for another query: the call then reads that query's rows (caught
            # only when their shape differs). The key store's few, short statements gain
            # little from preparing.
            "prepare_threshold": None,
        }
        # One plain connection first: a refused one fails at once, while a pool started
        # against a server that is down would back off (doubling, with no cap) and keep
        # failing for a while after the server is back.
        psycopg.connect(self.dsn, **kwargs).close()
        pool = self._factory(
            self.dsn,
            min_size=1,
            max_size=self.size,
            kwargs=kwargs,
            check=_idle_and_sound,
            timeout=self._timeout,
            # Keep trying to reconnect for as long as the process lives: an outage longer
            # than any fixed bound must still end in recovery.
            reconnect_timeout=365 * 86400.0,
            name="greenlang-crypto-keystore",
            open=True,
        )
        # Wait for the first connection: a request arriving before it is open makes the
        # pool add a second one, and a single thread would then alternate between two
        # server processes (psycopg_pool hands out the oldest first).
        try:
            pool.wait(timeout=self._timeout)
        except Exception:
            with suppress(Exception):
                pool.close(timeout=0)
            raise
        return pool

    @contextmanager
    def transaction(
        self, *, lock_id: int | None = None, single: bool = False
    ) -> Iterator[_QualifiedCursor]:
        """One transaction on a borrowed connection, committed when the block succeeds.

        ``lock_id`` takes that transaction-scoped advisory lock first (works through
        PgBouncer in transaction mode: it ends with the transaction). ``single`` is for a
        block that runs exactly one statement: it runs as its own transaction (autocommit),
        one round trip instead of three (BEGIN, the statement, COMMIT).

        Raises:
            KeyStoreUnavailableError: No connection within the checkout timeout, or the
                session was lost; the driver's error is chained.
        """
        # The clock is read only after an outage (a clock read is not free on every VM).
        if self._down_until:
            if time.monotonic() < self._down_until:
                raise KeyStoreUnavailableError("the key store is unreachable (it was a moment ago)")
            self._down_until = 0.0
        pool = None
        conn: Any = None
        try:
            pool = self._get()
            # getconn/putconn rather than the pool's context managers: a cache-miss decrypt
            # is one short query, and each nested context manager is a measurable share.
            conn = pool.getconn()
            raw = conn.cursor()
            try:
                if single:
                    yield _QualifiedCursor(raw, self.schema)
                    return
                raw.execute("BEGIN")
                if lock_id is not None:
                    raw.execute(f"SELECT pg_advisory_xact_lock({int(lock_id)})")
                yield _QualifiedCursor(raw, self.schema)
                raw.execute("COMMIT")
            except BaseException:
                if not single:
                    with suppress(Exception):  # a dead connection: the pool discards it
                        raw.execute("ROLLBACK")
                raise
            finally:
                raw.close()
        except KeyStoreUnavailableError:
            raise
        except Exception as exc:
            if _lost_prepared_statement(exc):
                # A prepared statement that vanished (or exists twice) means the server
                # connection changed under the session: a transaction-mode pooler the
                # configuration did not mention. Stop preparing; the call may be repeated
                # (so may those of other threads still on the old pool's connections).
                if not self.transaction_pooler:
                    _log.warning("the key store is behind a transaction-mode pooler")
                    self.transaction_pooler = True
                    self._replace(pool)
                raise KeyStoreUnavailableError(
                    "the key store connection changed under a prepared statement"
                ) from exc
            if is_outage(exc):
                if pool is None or type(exc).__name__ == "PoolTimeout":
                    # No pool could be started, or it had no connection to give.
                    self._down_until = time.monotonic() + 1.0
                    if pool is not None:
                        self._replace(pool)
                raise KeyStoreUnavailableError(
                    f"the key store is unreachable ({type(exc).__name__})"
                ) from exc
            raise
        finally:
            if conn is not None and pool is not None:
                with suppress(Exception):  # a pool closed meanwhile closes the connection
                    pool.putconn(conn)

    def _replace(self, failed: Any) -> None:
        """Starts a new pool in place of one that could not hand out a connection in time.

        The pool's own reconnection backs off exponentially without a cap, so after a long
        outage it could take about as long again to notice the server is back. A new pool
        connects at once; the old one holds only dead connections and is closed without
        waiting for them.
        """
        with self._lock:
            if failed is None or self._pool is not failed:
                return  # another thread replaced it already
            self._pool = None
        try:
            failed.close(timeout=0)
        except Exception as exc:  # its connections are dead: nothing to release
            _log.debug("closing a failed key store pool: %s", type(exc).__name__)

    def connections(self) -> int:
        """Connections the pool holds now (busy and idle)."""
        pool = self._pool
        if pool is None:
            return 0
        stats = pool.get_stats()
        return int(stats.get("pool_size", 0))

    def close(self) -> None:
        """Closes every connection; never raises for connections that are already dead."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                pool.close(timeout=2.0)
            except Exception as exc:  # a dead server: nothing left to release
                _log.debug("closing the key store pool failed: %s", type(exc).__name__)
