"""The job tables a column job creates match the packaged SQL (``greenlang_crypto/sql``)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sql import statements


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


@pytest.mark.integration
def test_job_tables_come_from_the_packaged_sql(pg_database: str, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from greenlang_crypto.sqlalchemy.migrate import ColumnJob, ColumnSpec

    engine = create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://", 1))
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
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {migrated}")
            for statement in statements("jobs", "postgresql", schema=migrated):
                conn.execute(statement)
        for table in ("glc_job_ranges", "glc_quarantine"):
            assert _columns(pg_database, "job_state", table) == _columns(
                pg_database, migrated, table
            )
            assert _columns(pg_database, "job_state", table)
        assert job.run().ok
    finally:
        svc.close()
        engine.dispose()
