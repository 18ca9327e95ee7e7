"""The key store's PostgreSQL pool without a server: schema qualification, what counts as an
outage, the checkout check, bounded retries, a transaction-mode pooler detected from a lost
prepared statement, and an unreachable server failing fast (restarts, PgBouncer and real
sessions: ``tests/integration/keys/test_pgpool.py``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from greenlang_crypto.exceptions import ConfigurationError, KeyStoreUnavailableError
from greenlang_crypto.keys.pgpool import (
    PgPool,
    _idle_and_sound,
    _lost_prepared_statement,
    _QualifiedCursor,
    is_outage,
    qualify,
    retrying,
)

# -- qualify -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM glc_keys", "SELECT * FROM ks.glc_keys"),
        (
            "UPDATE glc_meta SET v = 1 FROM glc_keys WHERE glc_keys.id = 1",
            "UPDATE ks.glc_meta SET v = 1 FROM ks.glc_keys WHERE ks.glc_keys.id = 1",
        ),
        ("SELECT * FROM other.glc_keys", "SELECT * FROM other.glc_keys"),
        ("NOTIFY glc_keyring", "NOTIFY glc_keyring"),
        ("LISTEN glc_keyring", "LISTEN glc_keyring"),
        ("SELECT pg_notify('glc_keyring', '1')", "SELECT pg_notify('glc_keyring', '1')"),
        ("SELECT my_glc_keys FROM t", "SELECT my_glc_keys FROM t"),
        ("SELECT 1", "SELECT 1"),
    ],
    ids=["table", "every-name", "qualified", "notify", "listen", "quoted", "inside-a-word", "none"],
)
def test_qualify_prefixes_our_table_names_only(sql: str, expected: str) -> None:
    assert qualify(sql, "ks") == expected


def test_qualify_caches_the_rewrite() -> None:
    qualify.cache_clear()
    qualify("SELECT * FROM glc_keys", "ks")
    qualify("SELECT * FROM glc_keys", "ks")
    assert qualify.cache_info().hits == 1


# -- outages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (psycopg.OperationalError("gone"), True),
        (psycopg.InterfaceError("closed"), True),
        (psycopg.errors.QueryCanceled("timeout"), True),
        (psycopg.errors.AdminShutdown("terminating"), True),
        (psycopg.errors.UniqueViolation("dup"), False),
        (psycopg.errors.NumericValueOutOfRange("big"), False),
        (psycopg.ProgrammingError("syntax"), False),
        (ValueError("x"), False),
    ],
    ids=["operational", "interface", "canceled", "shutdown", "unique", "data", "sql", "other"],
)
def test_only_a_lost_server_or_session_is_an_outage(exc: BaseException, outage: bool) -> None:
    assert is_outage(exc) is outage


def test_a_lost_prepared_statement_is_recognised_by_its_error_class() -> None:
    assert _lost_prepared_statement(psycopg.errors.InvalidSqlStatementName("x"))
    assert _lost_prepared_statement(psycopg.errors.DuplicatePreparedStatement("x"))
    assert not _lost_prepared_statement(psycopg.OperationalError("x"))


# -- the checkout check --------------------------------------------------------------------


class _Conn:
    def __init__(self, sock: socket.socket, *, closed: bool = False) -> None:
        self.sock = sock
        self.closed = closed
        self.broken = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, server = socket.socketpair()
    yield ours, server
    ours.close()
    server.close()


def test_an_idle_open_connection_passes_the_checkout_check(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    conn = _Conn(socket_pair[0])
    _idle_and_sound(conn)
    assert not conn.closed


def test_a_connection_the_server_spoke_on_is_closed_and_refused(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    conn = _Conn(socket_pair[0])
    socket_pair[1].sendall(b"E terminating connection")
    with pytest.raises(psycopg.OperationalError, match="ended the session"):
        _idle_and_sound(conn)
    assert conn.closed


def test_a_closed_or_broken_connection_is_refused(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    with pytest.raises(psycopg.OperationalError):
        _idle_and_sound(_Conn(socket_pair[0], closed=True))
    broken = _Conn(socket_pair[0])
    broken.broken = True
    with pytest.raises(psycopg.OperationalError):
        _idle_and_sound(broken)


# -- the qualified cursor ------------------------------------------------------------------


class _Cursor:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.executed: list[tuple[str, Any]] = []
        self.fail = fail
        self.rowcount = 2
        self.closed = False

    def execute(self, sql: str, params: Any = None) -> None:
        self.executed.append((sql, params))
        if self.fail is not None and sql not in ("BEGIN", "ROLLBACK", "COMMIT"):
            raise self.fail

    def fetchone(self) -> tuple[int]:
        return (1,)

    def fetchall(self) -> list[tuple[int]]:
        return [(1,), (2,)]

    def close(self) -> None:
        self.closed = True


def test_the_cursor_qualifies_each_statement_and_passes_the_rest_through() -> None:
    raw = _Cursor()
    cur = _QualifiedCursor(raw, "ks")
    cur.execute("SELECT v FROM glc_meta WHERE k = %s", ("x",))
    assert raw.executed == [("SELECT v FROM ks.glc_meta WHERE k = %s", ("x",))]
    assert cur.fetchone() == (1,) and cur.fetchall() == [(1,), (2,)] and cur.rowcount == 2
    assert cur.raw is raw
    cur.close()
    assert raw.closed


# -- retrying ------------------------------------------------------------------------------


def test_retrying_repeats_until_the_call_succeeds() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KeyStoreUnavailableError("down")
        return "ok"

    assert retrying(flaky, budget_seconds=5, first_delay=0.001) == "ok"
    assert len(calls) == 3


def test_retrying_gives_up_after_its_budget_and_never_retries_other_errors() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise KeyStoreUnavailableError("down")

    with pytest.raises(KeyStoreUnavailableError):
        retrying(down, budget_seconds=0.05, first_delay=0.01, max_delay=0.01)
    assert 1 < len(calls) < 50

    def wrong() -> None:
        calls.append(1)
        raise ValueError("bad")

    calls.clear()
    with pytest.raises(ValueError):
        retrying(wrong, budget_seconds=5)
    assert len(calls) == 1


# -- the pool without a server -------------------------------------------------------------


def test_a_pool_needs_at_least_one_connection() -> None:
    with pytest.raises(ConfigurationError):
        PgPool("postgresql://127.0.0.1:1/x", schema="ks", size=0)


def test_a_pool_starts_lazily_and_a_closed_one_refuses_work() -> None:
    pool = PgPool("postgresql://127.0.0.1:1/x", schema="ks")
    assert pool.connections() == 0
    pool.close()
    with pytest.raises(KeyStoreUnavailableError, match="closed"), pool.transaction():
        pass


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_server_is_an_outage_and_then_fails_fast() -> None:
    pool = PgPool(f"postgresql://u@127.0.0.1:{_refused_port()}/x", schema="ks")
    with pytest.raises(KeyStoreUnavailableError, match="unreachable") as info:
        with pool.transaction():
            pass
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    with pytest.raises(KeyStoreUnavailableError, match="a moment ago"), pool.transaction():
        pass
    pool.close()


class _FakePool:
    """Hands out one connection whose statements fail with ``fail``."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.cursor = _Cursor(fail)
        self.returned = 0
        self.closed = False

    def getconn(self) -> Any:
        pool = self

        class _C:
            def cursor(self) -> _Cursor:
                return pool.cursor

        return _C()

    def putconn(self, conn: Any) -> None:
        self.returned += 1

    def close(self, timeout: float = 0) -> None:
        self.closed = True


def _with_fake(fail: BaseException | None = None) -> tuple[PgPool, _FakePool]:
    pool = PgPool("postgresql://127.0.0.1:1/x", schema="ks")
    fake = _FakePool(fail)
    pool._pool = fake
    return pool, fake


def test_a_transaction_locks_commits_and_returns_the_connection() -> None:
    pool, fake = _with_fake()
    with pool.transaction(lock_id=42) as cur:
        cur.execute("SELECT 1 FROM glc_keys")
    assert [sql for sql, _ in fake.cursor.executed] == [
        "BEGIN",
        "SELECT pg_advisory_xact_lock(42)",
        "SELECT 1 FROM ks.glc_keys",
        "COMMIT",
    ]
    assert fake.returned == 1 and fake.cursor.closed


def test_a_single_statement_runs_without_begin_and_a_failure_rolls_back() -> None:
    pool, fake = _with_fake()
    with pool.transaction(single=True) as cur:
        cur.execute("SELECT 1")
    assert [sql for sql, _ in fake.cursor.executed] == ["SELECT 1"]
    pool, fake = _with_fake(psycopg.errors.UniqueViolation("dup"))
    with pytest.raises(psycopg.errors.UniqueViolation), pool.transaction() as cur:
        cur.execute("INSERT INTO glc_keys VALUES (1)")
    assert [sql for sql, _ in fake.cursor.executed][-1] == "ROLLBACK"
    assert fake.returned == 1


def test_a_lost_prepared_statement_switches_to_transaction_pooler_mode() -> None:
    pool, fake = _with_fake(psycopg.errors.InvalidSqlStatementName("_pg3_0"))
    assert not pool.transaction_pooler
    with pytest.raises(KeyStoreUnavailableError, match="prepared statement"):
        with pool.transaction() as cur:
            cur.execute("SELECT 1 FROM glc_keys")
    assert pool.transaction_pooler
    assert fake.closed and pool._pool is None  # the next call starts a pool that never prepares
