"""The shared database layer, without a PostgreSQL server: names, DSNs, SQLite files, DDL."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import psycopg
import pytest

from greenlang_crypto._db import (
    is_data_error,
    open_postgres,
    open_sqlite,
    pg_dsn,
    placeholders,
    run_ddl,
    schema_name,
)
from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.sql import statements


class RecordingCursor:
    """A DB-API cursor that keeps the statements it is given and can fail on chosen ones."""

    def __init__(self, fail_with: dict[str, Exception] | None = None) -> None:
        self.executed: list[str] = []
        self._fail_with = fail_with or {}

    def execute(self, sql: str) -> None:
        self.executed.append(sql)
        for needle, exc in self._fail_with.items():
            if needle in sql:
                raise exc


@pytest.mark.parametrize("name", ["encryption", "a", "_x1", "glc_audit_2"])
def test_a_plain_lowercase_identifier_is_a_schema_name(name: str) -> None:
    assert schema_name(name, "the key store") == name


@pytest.mark.parametrize("name", ["", "Encryption", "1abc", "a-b", "a b", "x;drop", 'a"b', "é"])
def test_anything_else_is_refused_naming_what_it_was_for(name: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^the audit sink schema must be"):
        schema_name(name, "the audit sink")


def test_pg_dsn_drops_the_sqlalchemy_driver_suffix_once() -> None:
    assert pg_dsn("postgresql+psycopg://u@h/db") == "postgresql://u@h/db"
    assert pg_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    # Only the scheme is rewritten, never text further in the URL.
    assert (
        pg_dsn("postgresql+psycopg://h/db?x=postgresql+psycopg://")
        == "postgresql://h/db?x=postgresql+psycopg://"
    )


def test_placeholders_follow_the_dialect() -> None:
    sql = "SELECT a FROM t WHERE b = ? AND c = ?"
    assert placeholders(sql, "sqlite") == sql
    assert placeholders(sql, "postgresql") == "SELECT a FROM t WHERE b = %s AND c = %s"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_sqlite_file_is_private_in_a_private_directory_with_wal_and_full_sync(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state" / "keys.db"
    conn = open_sqlite(db, timeout=1.0, autocommit=False)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.isolation_level == "DEFERRED"
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
    finally:
        conn.close()
    assert _mode(db) == 0o600
    assert _mode(db.parent) == 0o700


def test_autocommit_opens_without_implicit_transactions(tmp_path: Path) -> None:
    conn = open_sqlite(tmp_path / "a.db", timeout=1.0, autocommit=True)
    try:
        assert conn.isolation_level is None
        conn.execute("CREATE TABLE t (x INTEGER)")
        assert not conn.in_transaction
    finally:
        conn.close()


def test_the_connection_may_be_closed_from_another_thread(tmp_path: Path) -> None:
    import threading

    conn = open_sqlite(tmp_path / "a.db", timeout=1.0, autocommit=True)
    errors: list[BaseException] = []

    def close() -> None:
        try:
            conn.close()
        except BaseException as exc:  # recorded, asserted below
            errors.append(exc)

    t = threading.Thread(target=close)
    t.start()
    t.join()
    assert errors == []


def test_an_existing_file_loses_group_and_other_bits_but_keeps_its_owner_bits(
    tmp_path: Path,
) -> None:
    db = tmp_path / "keys.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o664)
    open_sqlite(db, timeout=1.0, autocommit=True).close()
    assert _mode(db) == 0o600
    # An owner read-only file (frozen as evidence) is never made writable again.
    os.chmod(db, 0o444)
    conn = open_sqlite(db, timeout=1.0, autocommit=True, read_only_fallback=True)
    conn.close()
    assert _mode(db) == 0o400


def test_a_file_this_process_may_not_write_is_refused_or_opened_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "audit.db"
    seed = sqlite3.connect(db)
    seed.execute("CREATE TABLE t (x INTEGER)")
    seed.execute("INSERT INTO t VALUES (7)")
    seed.commit()
    seed.close()
    # Root may write any file: make the access check answer as it would for another user.
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode: False if mode == os.W_OK else real_access(p, mode),
    )
    with pytest.raises(PermissionError, match="is not writable"):
        open_sqlite(db, timeout=1.0, autocommit=True)
    conn = open_sqlite(db, timeout=1.0, autocommit=True, read_only_fallback=True)
    try:
        assert conn.execute("SELECT x FROM t").fetchall() == [(7,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("INSERT INTO t VALUES (8)")
    finally:
        conn.close()


def test_open_postgres_pins_the_search_path_and_turns_seconds_into_libpq_units(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_connect(dsn: str, **kwargs: Any) -> str:
        calls.append((dsn, kwargs))
        return "connection"

    monkeypatch.setattr(psycopg, "connect", fake_connect)
    assert open_postgres("postgresql://h/db", schema="enc", connect_timeout=0.2) == "connection"
    assert open_postgres(
        "postgresql://h/db", schema="enc", connect_timeout=2.5, statement_timeout=0.25
    )
    open_postgres("postgresql://h/db", schema="enc", connect_timeout=1, statement_timeout=0.0001)
    (dsn, first), (_, second), (_, third) = calls
    assert dsn == "postgresql://h/db"
    # connect_timeout is whole seconds, rounded up, at least one.
    assert first == {"connect_timeout": 1, "options": "-c search_path=enc"}
    assert second["connect_timeout"] == 3
    assert second["options"] == ("-c statement_timeout=250 -c lock_timeout=250 -c search_path=enc")
    # A timeout under a millisecond still sets one (0 would mean none at all).
    assert third["options"].startswith("-c statement_timeout=1 -c lock_timeout=1 ")


def test_run_ddl_on_postgresql_locks_then_creates_the_schema_then_the_group() -> None:
    cur = RecordingCursor()
    run_ddl(cur, "audit", "postgresql", schema="evidence", lock_id=4242)
    expected = list(statements("audit", "postgresql", schema="evidence"))
    assert cur.executed[:2] == [
        "SELECT pg_advisory_xact_lock(4242)",
        "CREATE SCHEMA IF NOT EXISTS evidence",
    ]
    assert cur.executed[2:] == expected
    assert all("evidence." in s for s in expected if s.startswith("CREATE TABLE"))


def test_run_ddl_refuses_a_schema_that_is_not_an_identifier_before_creating_it() -> None:
    cur = RecordingCursor()
    with pytest.raises(ConfigurationError, match="audit schema"):
        run_ddl(cur, "audit", "postgresql", schema="x; DROP TABLE y", lock_id=1)
    assert cur.executed == ["SELECT pg_advisory_xact_lock(1)"]


def test_run_ddl_on_sqlite_creates_the_group_tables_and_can_run_twice(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "a.db")
    try:
        run_ddl(conn.cursor(), "audit", "sqlite", schema="ignored", lock_id=1)
        run_ddl(conn.cursor(), "audit", "sqlite", schema="ignored", lock_id=1)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert "glc_audit" in tables


def test_run_ddl_on_sqlite_treats_only_a_duplicate_column_as_done() -> None:
    first = statements("audit", "sqlite")[0]
    done = RecordingCursor({first: sqlite3.OperationalError("duplicate column name: x")})
    run_ddl(done, "audit", "sqlite", schema="s", lock_id=1)
    assert done.executed == list(statements("audit", "sqlite"))
    broken = RecordingCursor({first: sqlite3.OperationalError("disk I/O error")})
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        run_ddl(broken, "audit", "sqlite", schema="s", lock_id=1)
    assert broken.executed == [first]


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad"),
        TypeError("bad"),
        UnicodeEncodeError("utf-8", "x", 0, 1, "bad"),
        sqlite3.DataError("too big"),
        sqlite3.InterfaceError("bad binding"),
        psycopg.DataError("bad"),
        psycopg.errors.NumericValueOutOfRange("over INTEGER"),
        psycopg.errors.StringDataRightTruncation("too long"),
    ],
)
def test_errors_about_the_values_written_are_data_errors(exc: BaseException) -> None:
    assert is_data_error(exc) is True


@pytest.mark.parametrize(
    "exc",
    [
        OSError("connection refused"),
        sqlite3.OperationalError("database is locked"),
        sqlite3.DatabaseError("file is not a database"),
        psycopg.OperationalError("server closed the connection"),
        psycopg.errors.AdminShutdown("terminating connection"),
        RuntimeError("other"),
    ],
)
def test_outages_are_not_data_errors(exc: BaseException) -> None:
    assert is_data_error(exc) is False
