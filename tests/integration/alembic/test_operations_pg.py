"""The Alembic operations and the column job on a caller's connection, in process, against a
real PostgreSQL: why the job must use the migration's connection, and what each operation
refuses without changing anything."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from greenlang_crypto.alembic import ColumnJobFailedError
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import InvalidArgumentError, KeyStoreUnavailableError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy.migrate import ColumnJob, ColumnSpec, PlaintextFoundError
from tests.conftest import pg_private_database

pytestmark = pytest.mark.integration

SPEC = ColumnSpec("people", "email", tenant_id="acme")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EncryptionService]:
    d = tmp_path / "keys"
    d.mkdir()
    LocalKeyProvider(d).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=d))
    yield svc
    svc.close()


@pytest.fixture
def db_url() -> Iterator[str]:
    with pg_private_database("glc_alembic_ops", sqlalchemy_url=True) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE people (id integer PRIMARY KEY, email varchar(100))"))
        conn.execute(
            text(
                "INSERT INTO people SELECT g, 'p' || g || '@example.com' "
                "FROM generate_series(1, 30) g"
            )
        )
    yield eng
    eng.dispose()


def bind(conn: Connection) -> Any:
    """``op`` on ``conn``, as in a migration (Alembic's default transaction settings)."""
    return Operations.context(MigrationContext.configure(connection=conn))


def raw(engine: Engine) -> dict[int, bytes | str | None]:
    with engine.connect() as conn:
        return {
            i: (bytes(v) if isinstance(v, memoryview) else v)
            for i, v in conn.execute(text("SELECT id, email FROM people"))
        }


@pytest.mark.timeout(120)
def test_a_job_on_a_second_connection_waits_for_the_migrations_lock(
    engine: Engine, db_url: str, service: EncryptionService
) -> None:
    # What a job opening its own connection meets inside a migration: the migration's
    # ALTER TABLE holds the table until the migration commits. A lock timeout turns the wait
    # (which would be forever) into an error.
    impatient = create_engine(db_url, connect_args={"options": "-c lock_timeout=1000"})
    try:
        with engine.connect() as conn, conn.begin():
            from alembic import op

            with bind(conn):
                op.alter_column_to_encrypted("people", "email")
            with pytest.raises((KeyStoreUnavailableError, OperationalError)):
                ColumnJob(impatient, service, SPEC, max_retries=0).run()
            # On the migration's own connection it runs through, batch by batch.
            report = ColumnJob(conn, service, SPEC, batch_size=7).run()
            assert (report.written, report.remaining) == (30, 0)
    finally:
        impatient.dispose()
    values = raw(engine)
    assert all(isinstance(v, bytes) and v[0] == 0xFA for v in values.values())


def test_nothing_of_the_job_outlives_a_rolled_back_migration(
    engine: Engine, service: EncryptionService
) -> None:
    before = raw(engine)
    with engine.connect() as conn:
        conn.begin()
        from alembic import op

        with bind(conn):
            op.alter_column_to_encrypted("people", "email")
            report = op.encrypt_column(SPEC, service=service, batch_size=10)
        assert report.written == 30
        conn.rollback()  # the migration failed later
    assert raw(engine) == before
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT to_regclass('encryption.glc_job_ranges')")).scalar() is None
        )


def test_a_quarantined_row_fails_the_operation_naming_it(
    engine: Engine, service: EncryptionService
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("ALTER TABLE people ALTER COLUMN email TYPE bytea USING convert_to(email, 'UTF8')")
        )
        # Envelope magic on garbage: not plaintext, and it does not decrypt.
        conn.execute(text("UPDATE people SET email = '\\xfa0102'::bytea WHERE id = 17"))
    before = raw(engine)
    with engine.connect() as conn, conn.begin() as tx:
        from alembic import op

        with bind(conn), pytest.raises(ColumnJobFailedError, match=r"17 \(malformed envelope"):
            op.encrypt_column(SPEC, service=service)
        tx.rollback()
    assert raw(engine) == before


def test_the_operations_refuse_what_would_corrupt_and_change_nothing(
    engine: Engine, service: EncryptionService
) -> None:
    from alembic import op

    with engine.connect() as conn, conn.begin():
        with bind(conn):
            op.alter_column_to_encrypted("people", "email")
            with pytest.raises(InvalidArgumentError, match="bytea already"):
                op.alter_column_to_encrypted("people", "email")
            with pytest.raises(InvalidArgumentError, match="no column"):
                op.alter_column_to_encrypted("people", "mail")
            with pytest.raises(PlaintextFoundError, match="30 row"):
                op.forbid_plaintext(SPEC)
            # A refusal is a SAVEPOINT rolled back: the migration's transaction goes on.
            op.encrypt_column(SPEC, service=service)
            op.forbid_plaintext(SPEC)
            op.forbid_plaintext(SPEC)  # already there: nothing to do
            with pytest.raises(InvalidArgumentError, match="30 value"):
                op.alter_column_from_encrypted("people", "email")
            with pytest.raises(InvalidArgumentError, match="ColumnSpec carries no service"):
                op.encrypt_column(SPEC)
    with engine.connect() as conn:
        names = (
            conn.execute(
                text("SELECT conname FROM pg_constraint WHERE conrelid = 'people'::regclass")
            )
            .scalars()
            .all()
        )
        assert "glc_email_is_envelope" in names
    with engine.connect() as conn, conn.begin():
        with bind(conn):
            op.allow_plaintext("people", "email")
            op.allow_plaintext("people", "email")  # gone already: nothing to do
    with engine.connect() as conn:
        names = (
            conn.execute(
                text("SELECT conname FROM pg_constraint WHERE conrelid = 'people'::regclass")
            )
            .scalars()
            .all()
        )
        assert "glc_email_is_envelope" not in names


def test_the_type_change_round_trips_plaintext(engine: Engine) -> None:
    from alembic import op

    with engine.begin() as conn:
        conn.execute(text("UPDATE people SET email = 'Zoë@example.com' WHERE id = 3"))
    before = raw(engine)
    with engine.connect() as conn, conn.begin():
        with bind(conn):
            op.alter_column_to_encrypted("people", "email")
    assert raw(engine)[3] == "Zoë@example.com".encode()
    with engine.connect() as conn, conn.begin():
        with bind(conn):
            from sqlalchemy import String

            op.alter_column_from_encrypted("people", "email", type_=String(100))
    assert raw(engine) == before


@pytest.mark.parametrize("column", ['Mail"Addr', "100% mail"])
def test_the_type_change_handles_awkward_identifiers(engine: Engine, column: str) -> None:
    from alembic import op
    from sqlalchemy import String

    # Written for the driver, which reads a lone % as a placeholder.
    quoted = ('"' + column.replace('"', '""') + '"').replace("%", "%%")
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE SCHEMA "App"')
        conn.exec_driver_sql(f'CREATE TABLE "App"."Peo\'ple" (id int PRIMARY KEY, {quoted} text)')
        conn.exec_driver_sql('INSERT INTO "App"."Peo\'ple" VALUES (1, \'a@example.com\')')
    with engine.connect() as conn, conn.begin():
        with bind(conn):
            op.alter_column_to_encrypted("Peo'ple", column, schema="App")
            with pytest.raises(InvalidArgumentError, match="bytea already"):
                op.alter_column_to_encrypted("Peo'ple", column, schema="App")
            op.alter_column_from_encrypted("Peo'ple", column, schema="App", type_=String(50))
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = '\"App\".\"Peo''ple\"'::regclass AND attnum = 2"
        ).one()
        assert tuple(row) == (column, "character varying(50)")
