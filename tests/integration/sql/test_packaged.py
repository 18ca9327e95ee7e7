"""The job tables a column job creates match the packaged SQL (``greenlang_crypto/sql``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sql import statements
from tests.conftest import pg_columns


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
            assert pg_columns(pg_database, "job_state", table) == pg_columns(
                pg_database, migrated, table
            )
            assert pg_columns(pg_database, "job_state", table)
        assert job.run().ok
    finally:
        svc.close()
        engine.dispose()
