"""The pre-write check of column jobs, in process: what it needs no database for.

The sample round trip against real rows is in ``tests/integration/sqlalchemy/test_job_check.py``.
These tests use an engine that cannot connect: a check that needs no row never connects.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.engine import Engine

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EMAIL, BlindIndex, EncryptedString, FromRow
from greenlang_crypto.sqlalchemy._job_check import _probe, check_job
from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec, JobSpecMismatchError
from greenlang_crypto.sqlalchemy.migrate import ColumnJob
from greenlang_crypto.sqlalchemy.types import EncryptedBytes, EncryptedJSON


def _people(service: EncryptionService) -> Table:
    return Table(
        "people",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("tenant", String(20)),
        Column("email", EncryptedString(service, data_class="pii", tenant_id=FromRow("tenant"))),
        Column("email_idx", BlindIndex("email", normalizer=EMAIL)),
    )


def test_a_spec_without_a_model_is_not_checked(engine: Engine, service: EncryptionService) -> None:
    job = ColumnJob(engine, service, ColumnSpec("people", "email", tenant_id="acme"))
    check_job(job)  # the engine cannot connect: nothing was read


def test_contradicting_settings_are_refused_before_any_query(
    engine: Engine, service: EncryptionService
) -> None:
    t = _people(service)
    spec = ColumnSpec(
        "people",
        "email",
        tenant_column="tenant",
        index_column="email_idx",
        index_normalizer=EMAIL,
        model=t.c.email,
    )
    job = ColumnJob(engine, service, spec)
    with pytest.raises(JobSpecMismatchError) as info:
        check_job(job)
    message = str(info.value)
    assert message.startswith("the job's settings contradict the model people.email: ")
    assert "row binding (--bind-row): given False, model True" in message
    assert isinstance(info.value, InvalidArgumentError)  # the CLI's exit code 2


def test_a_model_that_cannot_be_migrated_is_a_typed_error(
    engine: Engine, service: EncryptionService
) -> None:
    t = Table(
        "cb",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("w", EncryptedString(service, data_class="d", tenant_id=lambda: "x")),
    )
    job = ColumnJob(engine, service, ColumnSpec("cb", "w", tenant_id="x", model=t.c.w))
    with pytest.raises(InvalidArgumentError, match="callable tenant"):
        check_job(job)


def test_the_probe_fits_the_column_kind(service: EncryptionService) -> None:
    text_value, text_bytes = _probe(EncryptedString(service, data_class="d", tenant_id="x"))
    assert isinstance(text_value, str) and text_bytes == text_value.encode()
    # Every built-in normalizer changes the text probe, so differing indexes differ on it.
    for step in EMAIL:
        assert step(text_value) != text_value
    raw, raw_bytes = _probe(EncryptedBytes(service, data_class="d", tenant_id="x"))
    assert raw == raw_bytes and b"\xff" in raw
    doc, doc_bytes = _probe(EncryptedJSON(service, data_class="d", tenant_id="x"))
    assert isinstance(doc, dict) and doc_bytes.startswith(b"{")
