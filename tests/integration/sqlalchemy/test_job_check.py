"""Column jobs built from the model: contradicting settings and sample mismatches write nothing.

Each test has a PostgreSQL database of its own and a model module on disk (a ``FromRow``
column, the README's case, and a row-bound column whose primary key the model renders
differently from the database).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EMAIL, ColumnSpec, JobSpecMismatchError, nfc
from greenlang_crypto.sqlalchemy._job_check import _round_trip, check_job
from greenlang_crypto.sqlalchemy.migrate import ColumnJob
from tests.integration.sqlalchemy._model_module import (
    fill_docs,
    model_module,
    private_engine,
    raw_rows,
)

pytestmark = pytest.mark.integration

ROWS = [(i, f"t{i % 3}", f"User{i}@Example.com") for i in range(1, 21)]


@pytest.fixture
def app(tmp_path: Path, service: EncryptionService) -> Iterator[tuple[ModuleType, Engine]]:
    with (
        private_engine("glc_job_check") as (_url, engine),
        model_module(tmp_path, service) as models,
    ):
        models.Base.metadata.create_all(engine)
        yield models, engine


def _readme_spec(models: ModuleType, **kw: Any) -> ColumnSpec:
    """The spec the README's flags give for the Doc model: no row binding."""
    settings: dict[str, Any] = {
        "table": "docs",
        "column": "email",
        "tenant_column": "tenant_id",
        "index_column": "email_bidx",
        "index_normalizer": EMAIL,
        "index_per_tenant": True,
        "version_column": "email_kv",
        "model": models.Doc.email,
    }
    settings.update(kw)
    return ColumnSpec(**settings)


def _job_tables_exist(engine: Engine) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT to_regclass('encryption.glc_job_ranges')")).scalar()
            is not None
        )


def test_a_spec_that_contradicts_its_model_writes_nothing(
    app: tuple[ModuleType, Engine], service: EncryptionService
) -> None:
    models, engine = app
    fill_docs(engine, ROWS)
    before = raw_rows(engine)
    job = ColumnJob(engine, service, _readme_spec(models), batch_size=7)
    with pytest.raises(JobSpecMismatchError, match=r"row binding \(--bind-row\): given False"):
        job.run()
    assert raw_rows(engine) == before
    assert not _job_tables_exist(engine)  # refused before the job touched anything


def test_the_model_spec_writes_rows_the_orm_reads(
    app: tuple[ModuleType, Engine], service: EncryptionService
) -> None:
    models, engine = app
    fill_docs(engine, [*ROWS, (21, "t0", None)])
    spec = ColumnSpec.from_model(models.Doc.email, version_column="email_kv")
    report = ColumnJob(engine, service, spec, batch_size=7).run()
    assert (report.written, report.remaining, report.quarantined) == (20, 0, [])
    index = models.Doc.__table__.c.email_bidx.type
    with Session(engine) as s:
        docs = {d.id: d for d in s.scalars(select(models.Doc))}
        for pk, tenant, email in ROWS:
            doc = docs[pk]
            assert doc.email == email  # decrypted by the ORM with the row's binding
            assert doc.email_kv == service.primary_version
            # Found by the model's own blind index (per tenant, EMAIL-normalized).
            found = s.scalars(
                select(models.Doc.id).where(
                    models.Doc.email_bidx == index.compute(email.upper(), tenant_id=tenant)
                )
            ).all()
            assert found == [pk]
        assert docs[21].email is None
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM docs WHERE get_byte(email, 0) = 250"))
        assert stored.scalar() == 20


def test_a_primary_key_the_model_renders_otherwise_is_caught_by_the_sample(
    app: tuple[ModuleType, Engine], service: EncryptionService
) -> None:
    models, engine = app
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO notes (id, body) SELECT g, convert_to('note ' || g, 'UTF8') "
                "FROM generate_series(1, 5) AS g"
            )
        )
    before = raw_rows(engine, "notes")
    # Every setting agrees with the model; only a real row shows the difference.
    spec = ColumnSpec.from_model(models.Note.body)
    job = ColumnJob(engine, service, spec)
    with pytest.raises(
        JobSpecMismatchError, match="the primary key reads as int in the job and str"
    ):
        job.run()
    assert raw_rows(engine, "notes") == before


def test_the_sample_names_each_differing_setting(
    app: tuple[ModuleType, Engine], service: EncryptionService
) -> None:
    models, engine = app
    fill_docs(engine, ROWS)
    model_spec = ColumnSpec.from_model(models.Doc.email)
    cases: dict[str, dict[str, Any]] = {
        "row binding (--bind-row) job False, model True": {"bind_row": False},
        "data class: job 'other', model 'pii'": {"data_class": "other"},
        "index normalizer (--index-normalizer)": {"index_normalizer": (nfc,)},
        "index per tenant (--index-per-tenant): job False, model True": {"index_per_tenant": False},
        "index length (--index-length): job 8, model 16": {"index_length": 8},
        "index purpose (--index-purpose)": {"index_purpose": "docs.elsewhere"},
        "index column (--index-column)": {"index_column": None},
    }
    for expected, change in cases.items():
        job = ColumnJob(engine, service, _readme_spec(models, **{"bind_row": True, **change}))
        found = _round_trip(job, model_spec)
        assert any(expected in f for f in found), (expected, found)
    # And the model's own settings give nothing to report.
    assert _round_trip(ColumnJob(engine, service, model_spec), model_spec) == []


def test_an_empty_table_is_checked_on_its_settings_only(
    app: tuple[ModuleType, Engine], service: EncryptionService
) -> None:
    models, engine = app
    model_spec = ColumnSpec.from_model(models.Doc.email)
    check_job(ColumnJob(engine, service, model_spec))
    bad = ColumnJob(engine, service, _readme_spec(models, data_class="other"))
    with pytest.raises(JobSpecMismatchError, match="data class"):
        check_job(bad)
    # No row to bind a sample to: no probe is encrypted (no key made for an invented tenant).
    assert _round_trip(bad, model_spec) == []


def test_a_row_inserted_during_the_sample_read_is_no_mismatch(
    app: tuple[ModuleType, Engine], service: EncryptionService
) -> None:
    # The sample's primary key is read twice, as the job reads it and through the model's
    # column type. The application inserting a row that sorts first in between (a random
    # UUID key does that all the time) must not turn into a reported mismatch: both reads
    # are of the one row.
    from sqlalchemy import event

    models, engine = app
    fill_docs(engine, ROWS)
    model_spec = ColumnSpec.from_model(models.Doc.email)
    job = ColumnJob(engine, service, model_spec)
    inserted: list[bool] = []

    def insert_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The model's read of the sample row: the job's own read has just run.
        if not inserted and "FROM docs" in statement and "docs.id" in statement:
            inserted.append(True)
            with engine.connect() as other, other.begin():
                other.execute(
                    text(
                        "INSERT INTO docs (id, tenant_id, email) "
                        "VALUES (0, 't0', convert_to('late@example.com', 'UTF8'))"
                    )
                )

    event.listen(engine, "before_cursor_execute", insert_first)
    try:
        found = _round_trip(job, model_spec)
    finally:
        event.remove(engine, "before_cursor_execute", insert_first)
    assert inserted == [True]  # the race did happen
    assert found == []
