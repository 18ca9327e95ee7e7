"""The SQL sinks in process: SQLite's tables come from the packaged SQL, its write lock is
bounded, its probe stays outside the chain; PostgreSQL's constructor checks what it is given
(the server side is in ``tests/integration/audit/sinks/test_sql.py``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from greenlang_crypto._core import DataKey
from greenlang_crypto.audit import ChainKey, PostgresAuditSink, SqliteAuditSink
from greenlang_crypto.audit.records import AuditEntry
from greenlang_crypto.exceptions import AuditSinkUnavailableError, ConfigurationError
from greenlang_crypto.sql import statements

from ..conftest import audit_stack


def test_sqlite_write_lock_times_out(data_dir: Path) -> None:
    sink = SqliteAuditSink(data_dir / "audit.db", timeout=0.2)
    _svc, audit = audit_stack(data_dir, sink)
    blocker = sqlite3.connect(data_dir / "audit.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(AuditSinkUnavailableError):
            audit.record("key_rotate", actor="root", outcome="intent")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert audit.record("key_rotate", actor="root", outcome="intent") is not None
    audit.close()


def test_sqlite_sink_creates_exactly_the_packaged_tables(tmp_path: Path) -> None:
    sink = SqliteAuditSink(tmp_path / "audit.db")
    sink.ping()
    sink.close()
    reference = sqlite3.connect(":memory:")
    for statement in statements("audit", "sqlite"):
        reference.execute(statement)
    got = sqlite3.connect(tmp_path / "audit.db")
    query = "SELECT type, name, sql FROM sqlite_master WHERE name LIKE 'glc_%' ORDER BY name"
    assert got.execute(query).fetchall() == reference.execute(query).fetchall()
    assert {r[1] for r in got.execute(query)} == {"glc_audit", "glc_audit_meta", "glc_audit_time"}


def test_schema_names_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        PostgresAuditSink("postgresql://u@h/db", schema='x"; DROP TABLE y; --')
    with pytest.raises(ValueError):
        statements("audit", "postgresql", schema="Bad-Name")
    # Nothing to move into `public` from `public`: the move blocks are left out there.
    assert not [s for s in statements("audit", "postgresql", schema="public") if "DO" in s[:3]]
    assert [s for s in statements("audit", "postgresql") if s.startswith("DO")]


def test_the_probe_is_written_outside_the_chain(tmp_path: Path) -> None:
    sink = SqliteAuditSink(tmp_path / "audit.db")
    chain = ChainKey.from_root(DataKey.generate())
    sink.append([AuditEntry(action="admin_action")], chain)
    sink.ping()
    sink.ping()
    assert [r.seq for r in sink.records()] == [1]
    assert sink.get_meta("probe") is not None
    sink.close()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        assert db.execute("SELECT count(*) FROM glc_audit_meta WHERE name = 'probe'").fetchone()
        assert db.execute("SELECT count(*) FROM glc_audit").fetchone() == (1,)


def test_records_are_read_back_in_sequence_order_after_a_reopen(tmp_path: Path) -> None:
    chain = ChainKey.from_root(DataKey.generate())
    first = SqliteAuditSink(tmp_path / "audit.db")
    written = first.append([AuditEntry(action="admin_action", details={"i": i})
                            for i in range(3)], chain)  # fmt: skip
    first.close()
    again = SqliteAuditSink(tmp_path / "audit.db")
    assert list(again.records()) == written
    assert again.head() == (3, written[-1].hmac)
    assert again.append([], chain) == []
    again.close()


def test_a_log_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "audit.db").mkdir()  # a directory where the database should be
    sink = SqliteAuditSink(tmp_path / "audit.db")
    with pytest.raises(AuditSinkUnavailableError):
        sink.ping()
    sink.close()


def test_the_postgres_description_names_no_credentials() -> None:
    sink = PostgresAuditSink("postgresql+psycopg://user:secret@db.example:5432/app")
    assert "secret" not in sink.description and "user" not in sink.description
    assert sink.description.endswith("db.example:5432/app")
    assert sink.schema == "encryption"
    assert "secret" not in repr(sink)
