"""The key store's connection layer on SQLite: transactions, retries, typed failures."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from greenlang_crypto.exceptions import ConfigurationError, KeyStoreUnavailableError
from greenlang_crypto.keys.connection import Database, damaged, idempotent, sqlite_connector


def _db(tmp_path: Path, *, retry_seconds: float = 0.5) -> Database:
    path = str(tmp_path / "keystore.db")
    db = Database(
        sqlite_connector(path), "sqlite", f"sqlite:///{path}", retry_seconds=retry_seconds
    )
    db.migrate()
    return db


def test_a_transaction_commits_on_success_and_rolls_back_on_error(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with db.transaction(serialized=True) as cur:
        cur.execute(
            db.sql("INSERT INTO glc_keyring (id, min_decryption_version) VALUES (?, ?)"), (1, 3)
        )
    with pytest.raises(RuntimeError), db.transaction() as cur:
        cur.execute("UPDATE glc_keyring SET min_decryption_version = 9")
        raise RuntimeError("abandon")
    with db.one() as cur:
        cur.execute("SELECT min_decryption_version FROM glc_keyring")
        assert cur.fetchall() == [(3,)]
    db.close()


def test_statements_keep_their_placeholders_on_sqlite(tmp_path: Path) -> None:
    db = _db(tmp_path)
    statement = "SELECT 1 WHERE ? = ?"
    assert db.sql(statement) == statement
    assert db.pool_connections() == 0
    assert "sqlite:///" in repr(db)
    db.close()


def test_each_thread_gets_its_own_connection_and_close_releases_all(tmp_path: Path) -> None:
    db = _db(tmp_path)
    mine = db.connection()
    assert db.connection() is mine
    theirs: list[object] = []
    worker = threading.Thread(target=lambda: theirs.append(db.connection()))
    worker.start()
    worker.join()
    assert theirs[0] is not mine
    db.close()
    with pytest.raises(sqlite3.ProgrammingError):
        mine.execute("SELECT 1")
    assert db.connection() is not mine  # a new one on next use


def test_a_connection_that_cannot_open_is_an_outage(tmp_path: Path) -> None:
    db = _db(tmp_path)
    db.close()

    def refuse() -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    db.connect = refuse
    with pytest.raises(KeyStoreUnavailableError, match="cannot be opened"), db.one():
        pass


def test_a_locked_database_is_an_outage_not_a_statement_error(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with pytest.raises(KeyStoreUnavailableError, match="unavailable"), db.transaction():
        raise sqlite3.OperationalError("database is locked")
    with pytest.raises(sqlite3.OperationalError, match="no such table"), db.transaction() as cur:
        cur.execute("SELECT * FROM glc_missing")
    db.close()


def test_a_malformed_database_is_a_configuration_error(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with pytest.raises(ConfigurationError, match="damaged or not a database"), db.one():
        raise sqlite3.DatabaseError("file is not a database")
    assert "sqlite:///x" in str(damaged("sqlite:///x"))
    db.close()


def test_a_damaged_file_fails_to_open_as_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "keystore.db"
    path.write_bytes(b"not a database " * 400)
    with pytest.raises(ConfigurationError, match="damaged"):
        sqlite_connector(str(path))().execute("SELECT * FROM sqlite_master")


class _Flaky:
    """Fails its first calls as an outage, then answers."""

    def __init__(self, db: Database, failures: int) -> None:
        self.db = db
        self.failures = failures
        self.calls = 0

    @idempotent
    def read(self, value: int) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise KeyStoreUnavailableError("down for a moment")
        return value


def test_idempotent_work_is_retried_within_the_bound(tmp_path: Path) -> None:
    db = _db(tmp_path, retry_seconds=5.0)
    flaky = _Flaky(db, failures=2)
    assert flaky.read(7) == 7 and flaky.calls == 3
    db.retry_seconds = 0.0
    with pytest.raises(KeyStoreUnavailableError):
        _Flaky(db, failures=1).read(7)
    assert db.retry(lambda: 5, budget_seconds=0.0) == 5
    db.close()


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_migrate_stamps_the_file_and_a_stamped_file_skips_the_ddl(tmp_path: Path) -> None:
    from greenlang_crypto.sql import schema_marker

    path = tmp_path / "keystore.db"
    _db(tmp_path).close()
    assert _user_version(path) == schema_marker()
    # A stamped file is trusted to hold every table: drop one, and the next open leaves it
    # dropped (the DDL is not read again) ...
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE glc_instances")
    _db(tmp_path).close()
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "glc_instances" not in names
    # ... while a file stamped by another set of migrations runs the DDL again and is restamped.
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 7")
    _db(tmp_path).close()
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "glc_instances" in names
    assert _user_version(path) == schema_marker()
