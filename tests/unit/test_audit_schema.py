"""One schema for the audit sinks and the column jobs: their tables come from the packaged SQL
(``greenlang_crypto.sql.statements``), live where the migrations put them (``encryption.*`` on
PostgreSQL), and an audit log an older release left in ``public`` moves there intact."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto.audit import AuditLog, PostgresAuditSink, SqliteAuditSink
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import ConfigurationError, InvalidArgumentError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sql import statements


def _pg_base() -> str:
    url = os.environ.get("GLC_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("GLC_PG_URL is not set (CI must start PostgreSQL: scripts/services.sh)")
        pytest.skip("GLC_PG_URL not set; start services with scripts/services.sh")
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def database() -> Iterator[str]:
    """A private PostgreSQL database (dropped afterwards)."""
    import psycopg

    dsn = _pg_base()
    name = f"glc_audit_schema_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{dsn.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


def _columns(url: str, schema: str, table: str) -> list[tuple[str, str]]:
    return [
        (str(c), str(t))
        for c, t in _query(
            url,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            schema,
            table,
        )
    ]


def _service(data_dir: Path) -> EncryptionService:
    LocalKeyProvider(data_dir).create_master_key()
    return EncryptionService(EncryptionServiceConfig(data_dir=data_dir))


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


@pytest.mark.integration
def test_postgres_sink_uses_the_encryption_schema(database: str, tmp_path: Path) -> None:
    svc = _service(tmp_path)
    audit = AuditLog(PostgresAuditSink(database), start_thread=False, anchors=[])
    audit.attach(svc)
    audit.record("admin_action", actor="op")
    assert audit.verify().ok
    audit.close()
    svc.close()
    tables = _query(
        database,
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_name LIKE 'glc_audit%%' ORDER BY 1, 2",
    )
    assert tables == [("encryption", "glc_audit"), ("encryption", "glc_audit_meta")]
    # The same columns as `db migrate` creates: one DDL, in the sql/ files.
    import psycopg

    migrated = f"m_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {migrated}")
        for statement in statements("audit", "postgresql", schema=migrated):
            conn.execute(statement)
    for table in ("glc_audit", "glc_audit_meta"):
        assert _columns(database, "encryption", table) == _columns(database, migrated, table)


@pytest.mark.integration
def test_an_audit_log_left_in_public_moves_with_its_chain(database: str, tmp_path: Path) -> None:
    svc = _service(tmp_path)
    # An older release's log: its tables in `public`, records chained under the root key.
    old = AuditLog(PostgresAuditSink(database, schema="public"), start_thread=False, anchors=[])
    old.attach(svc)
    for i in range(4):
        old.record("admin_action", actor=f"op{i}")
    old.close()
    assert _query(database, "SELECT count(*) FROM public.glc_audit") == [(4,)]

    new = AuditLog(PostgresAuditSink(database), start_thread=False, anchors=[])
    new.attach(svc)
    result = new.verify()
    assert result.ok and result.records == 4
    new.record("admin_action", actor="op4")
    assert new.verify().records == 5
    new.close()
    svc.close()
    assert _query(database, "SELECT to_regclass('public.glc_audit')") == [(None,)]
    assert _query(database, "SELECT count(*) FROM encryption.glc_audit") == [(5,)]


@pytest.mark.integration
def test_two_audit_logs_are_never_merged(database: str, tmp_path: Path) -> None:
    import psycopg

    svc = _service(tmp_path)
    for schema in ("encryption", "public"):
        log = AuditLog(PostgresAuditSink(database, schema=schema), start_thread=False, anchors=[])
        log.attach(svc)
        log.record("admin_action", actor=schema)
        log.close()
    # Both hold records: neither is moved or dropped (an operator merges them).
    with psycopg.connect(database, autocommit=True) as conn:
        for statement in statements("audit", "postgresql"):
            conn.execute(statement)
    assert _query(database, "SELECT actor FROM public.glc_audit") == [("public",)]
    assert _query(database, "SELECT actor FROM encryption.glc_audit") == [("encryption",)]
    svc.close()


def test_schema_names_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        PostgresAuditSink("postgresql://u@h/db", schema='x"; DROP TABLE y; --')
    with pytest.raises(ValueError):
        statements("audit", "postgresql", schema="Bad-Name")
    # Nothing to move into `public` from `public`: the move blocks are left out there.
    assert not [s for s in statements("audit", "postgresql", schema="public") if "DO" in s[:3]]
    assert [s for s in statements("audit", "postgresql") if s.startswith("DO")]


@pytest.mark.integration
def test_job_tables_come_from_the_packaged_sql(database: str, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from greenlang_crypto.sqlalchemy.migrate import ColumnJob, ColumnSpec

    engine = create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
    svc = _service(tmp_path)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE people (id BIGINT PRIMARY KEY, email BYTEA)"))
        spec = ColumnSpec(table="people", column="email", tenant_id="acme")
        with pytest.raises(InvalidArgumentError):
            ColumnJob(engine, svc, spec, state_schema="Jobs; DROP")
        job = ColumnJob(engine, svc, spec, state_schema="job_state")
        job.ensure_tables()
        import psycopg

        migrated = f"m_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {migrated}")
            for statement in statements("jobs", "postgresql", schema=migrated):
                conn.execute(statement)
        for table in ("glc_job_ranges", "glc_quarantine"):
            assert _columns(database, "job_state", table) == _columns(database, migrated, table)
            assert _columns(database, "job_state", table)
        assert job.run().ok
    finally:
        svc.close()
        engine.dispose()
