"""``db encrypt-column --model``: the job's settings come from the model, flags must agree.

The README's case: a ``FromRow`` column migrated with flags that leave row binding out wrote
every row, and then every read failed. With ``--model`` the job takes row binding (and every
other setting) from the column type; a flag that contradicts it is refused with exit 2 and
nothing written. The CLI runs in process; each test has a database of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from greenlang_crypto import cli
from greenlang_crypto.service import EncryptionService
from tests.integration.sqlalchemy._model_module import (
    fill_docs,
    model_module,
    private_engine,
    raw_rows,
)

pytestmark = pytest.mark.integration

ROWS = [(i, f"t{i % 2}", f"user{i}@example.com") for i in range(1, 21)]


@pytest.fixture
def app(tmp_path: Path, service: EncryptionService) -> Iterator[tuple[ModuleType, Engine, str]]:
    with (
        private_engine("glc_model_jobs") as (url, engine),
        model_module(tmp_path, service) as models,
    ):
        models.Base.metadata.create_all(engine)
        fill_docs(engine, ROWS)
        yield models, engine, url


def _run(data_dir: Path, url: str, *args: str) -> int:
    return cli.main(
        ["--data-dir", str(data_dir), "db", "encrypt-column", *args, "--url", url, "--no-progress"]
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--tenant-column", "tenant_id", "--no-bind-row"], "row binding (--bind-row)"),
        (["--tenant", "acme"], "fixed tenant (--tenant)"),
        (["--index-normalizer", "none"], "index normalizer (--index-normalizer)"),
        (["--no-index-per-tenant"], "index per tenant (--index-per-tenant)"),
        (["--data-class", "contact"], "data class (--data-class)"),
        (["--column", "email_bidx"], "column (--column)"),
    ],
)
def test_flags_that_contradict_the_model_are_refused_and_write_nothing(
    app: tuple[ModuleType, Engine, str],
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    named: str,
) -> None:
    models, engine, url = app
    before = raw_rows(engine)
    assert _run(data_dir, url, "--model", f"{models.__name__}:Doc.email", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: JobSpecMismatchError: flags contradict the model ")
    assert named in err and "(leave them out: --model gives them)" in err
    assert raw_rows(engine) == before


def test_with_the_model_every_row_is_written_and_reads_through_the_orm(
    app: tuple[ModuleType, Engine, str],
    data_dir: Path,
    service: EncryptionService,
    capsys: pytest.CaptureFixture[str],
) -> None:
    models, engine, url = app
    model = f"{models.__name__}:Doc.email"
    # Flags that repeat the model are fine; the version column is not the model's to say.
    code = _run(
        data_dir,
        url,
        "--model",
        model,
        "--tenant-column",
        "tenant_id",
        "--bind-row",
        "--version-column",
        "email_kv",
        "--batch-size",
        "6",
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "warning" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["written"], summary["remaining"], summary["quarantined"]) == (20, 0, 0)
    # The audit records name the column the job changed, taken from the model.
    import sqlite3

    audit = sqlite3.connect(data_dir / "audit.db")
    try:
        details = [
            json.loads(d)
            for (d,) in audit.execute(
                "SELECT details FROM glc_audit WHERE action = 'db_encrypt' ORDER BY seq"
            )
        ]
    finally:
        audit.close()
    assert len(details) == 2  # intent, outcome
    assert all((d["table"], d["column"]) == ("docs", "email") for d in details), details
    index = models.Doc.__table__.c.email_bidx.type
    # The CLI's service made the first index key; this process learns of it now.
    service.refresh_keyring()
    index.refresh()
    with Session(engine) as s:
        docs = s.scalars(select(models.Doc).order_by(models.Doc.id)).all()
        assert len(docs) == 20
        for doc in docs:
            assert doc.email == f"user{doc.id}@example.com"
            assert doc.email_kv == service.primary_version
        stored = {i: b for i, b in s.execute(select(models.Doc.id, models.Doc.email_bidx))}
        for doc in docs:
            assert stored[doc.id] == index.compute(doc.email, tenant_id=doc.tenant_id)


def test_flags_alone_still_work_with_a_warning(
    app: tuple[ModuleType, Engine, str], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _models, engine, url = app
    before = raw_rows(engine)
    code = _run(
        data_dir, url, "--table", "docs", "--column", "email", "--tenant-column", "tenant_id",
        "--dry-run",
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.startswith("warning: the job's settings come from flags alone")
    assert "Pass --model package.module:Class.attribute" in err
    assert json.loads(out)["plaintext"] == 20
    assert raw_rows(engine) == before


def test_the_dry_run_with_the_model_checks_the_sample_first(
    app: tuple[ModuleType, Engine, str], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models, engine, url = app
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO notes (id, body) VALUES (1, convert_to('n', 'UTF8'))")
    before = raw_rows(engine, "notes")
    assert _run(data_dir, url, "--model", f"{models.__name__}:Note.body", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "does not read back through the model notes.body" in err
    assert "the primary key reads as int in the job and str in the model" in err
    assert raw_rows(engine, "notes") == before
