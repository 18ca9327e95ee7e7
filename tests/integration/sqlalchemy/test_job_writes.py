"""The batch write of column jobs: what reaches the engine's log, and how PostgreSQL runs it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import Engine

from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy._job_spec import _Row, _Write
from greenlang_crypto.sqlalchemy.migrate import ColumnJob
from tests.integration.sqlalchemy._jobs import fill_plaintext, people_table, spec

pytestmark = pytest.mark.integration


@pytest.fixture
def people(pg_engine: Engine, service: EncryptionService, table_name: str) -> Iterator[Any]:
    md = MetaData()
    t = people_table(service, table_name, md)
    md.create_all(pg_engine)
    yield t
    md.drop_all(pg_engine)


def test_the_engine_log_shows_no_stored_value_at_debug(
    pg_engine: Engine,
    pg_url: str,
    service: EncryptionService,
    people: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The CLI's engine (parameters hidden); the UPDATE returns every envelope and index it
    # wrote, for the verification, and SQLAlchemy prints each row a result yields at DEBUG.
    engine = create_engine(pg_url, hide_parameters=True, echo="debug")
    try:
        fill_plaintext(engine, people.name, 30)
        with caplog.at_level(logging.DEBUG, logger="sqlalchemy.engine"):
            assert ColumnJob(engine, service, spec(people.name), batch_size=10).run().written == 30
            service.rotate()
            job = ColumnJob(engine, service, spec(people.name), mode="reencrypt", batch_size=10)
            assert job.run().written == 30
        log = caplog.text
    finally:
        engine.dispose()
    with pg_engine.connect() as conn:
        stored = conn.execute(text(f"SELECT email, email_bidx FROM {people.name}")).all()
    assert len(stored) == 30
    assert "UPDATE" in log and "unnest" in log  # the write was logged, as a statement
    for envelope, index in stored:
        for value in (bytes(envelope), bytes(index)):
            assert repr(value)[2:40] not in log and value.hex()[:32] not in log
    for i in range(30):
        assert f"user{i}@example.com" not in log


def test_the_batch_update_never_scans_the_whole_table(
    pg_engine: Engine, pg_url: str, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, 40_000)
    with pg_engine.begin() as conn:
        conn.execute(text(f"ANALYZE {people.name}"))
    job = ColumnJob(pg_engine, service, spec(people.name), batch_size=500)
    with pg_engine.connect() as conn:
        statement = job._write_statement(conn).compile(dialect=pg_engine.dialect).string
    writes = [
        _Write(_Row(i, str(i), None, "acme", None, "1"), b"", b"\xfa", 1, b"\x01")
        for i in range(10_000, 10_500)
    ]
    params = {
        "pks": [w.row.pk_text for w in writes],
        "olds": [w.row.xmin for w in writes],
        "new_values": [w.new_value for w in writes],
        "key_versions": [w.key_version for w in writes],
        "indexes": [w.index for w in writes],
    }
    # With the arrays' contents known (a custom plan), a join of 500 keys may hash the whole
    # table instead: every batch would then read every row.
    dsn = pg_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + statement, params))
        conn.rollback()
    assert "Seq Scan" not in plan, plan
    assert "Index" in plan, plan


def test_a_job_on_awkward_identifiers(pg_engine: Engine, service: EncryptionService) -> None:
    # A column whose name holds a ``%`` (doubled once by the driver's quoting and once more
    # by ``text()`` unless undone), an upper-case letter and a quote: the job encrypts it and
    # phase 2 constrains it.
    from sqlalchemy import text as sql

    from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec
    from greenlang_crypto.sqlalchemy.migrate import ColumnJob, enforce_ciphertext

    table = f"t_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        conn.execute(sql(f'CREATE TABLE {table} (id bigint PRIMARY KEY, "E%ma""il" bytea)'))
        conn.execute(
            sql(
                f'INSERT INTO {table} (id, "E%ma""il") SELECT g, '
                "convert_to('u' || g || '@x.org', 'UTF8') FROM generate_series(1, 30) g"
            )
        )
    try:
        spec = ColumnSpec(table=table, column='E%ma"il', tenant_id="acme")
        report = ColumnJob(pg_engine, service, spec, batch_size=7).run()
        assert report.written == 30
        enforce_ciphertext(pg_engine, spec)
        with pg_engine.connect() as conn:
            first = conn.execute(sql(f'SELECT get_byte("E%ma""il", 0) FROM {table}')).scalars()
            assert set(first) == {0xFA}
    finally:
        with pg_engine.begin() as conn:
            conn.execute(sql(f"DROP TABLE {table}"))
