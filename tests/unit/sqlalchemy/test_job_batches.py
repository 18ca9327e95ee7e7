"""The row work of column jobs without a database: what each row needs, and the values it gets.

The writes, read-backs and quarantine inserts run against PostgreSQL, in
tests/integration/sqlalchemy (test_migrate.py and test_jobs_faults.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EMAIL
from greenlang_crypto.sqlalchemy._common import location_aad, row_aad
from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec, JobReport, _Row
from greenlang_crypto.sqlalchemy.migrate import ColumnJob

CTX = EncryptionContext(tenant_id="acme", data_class="pii")
AAD = location_aad("people", "email")


def make_job(engine: Engine, service: EncryptionService, **kw: Any) -> ColumnJob:
    spec_kw = {"index_column": "email_bidx", "index_normalizer": EMAIL}
    spec_kw.update(kw.pop("spec", {}))
    spec = ColumnSpec("people", "email", tenant_id="acme", **spec_kw)
    return ColumnJob(engine, service, spec, **kw)


def row(pk: int, value: bytes | None, index: bytes | None = None, tenant: str = "acme") -> _Row:
    return _Row(pk, str(pk), value, tenant, index, "100")


def test_plaintext_is_encrypted_and_indexed(engine: Engine, service: EncryptionService) -> None:
    job = make_job(engine, service)
    report = JobReport("j")
    writes, bad = job._plan_rows([row(1, b"Ann@Example.com"), row(2, None)], report)
    assert bad == []
    assert report.skipped == 1
    [w] = writes
    assert w.row.pk == 1
    assert w.plaintext == b"Ann@Example.com"
    assert w.new_value is not None
    assert service.decrypt(w.new_value, CTX, associated_data=AAD) == b"Ann@Example.com"
    assert w.key_version == service.primary_version == parse_envelope(w.new_value).key_version
    # The index is of the normalized value.
    assert w.index == job._index_of(b"ann@example.com", w.row)
    assert w.index != job._index_of(b"bob@example.com", w.row)


def test_an_envelope_missing_only_its_index_keeps_its_ciphertext(
    engine: Engine, service: EncryptionService
) -> None:
    job = make_job(engine, service)
    env = service.encrypt(b"c@d.org", CTX, associated_data=AAD)
    report = JobReport("j")
    writes, bad = job._plan_rows([row(3, env), row(4, env, index=b"\x01idx")], report)
    assert bad == []
    assert report.skipped == 1  # pk 4 has both
    [w] = writes
    assert w.row.pk == 3
    assert w.new_value is None
    assert w.key_version == parse_envelope(env).key_version
    assert w.index is not None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe not utf-8", "plaintext is not UTF-8"),
        (b"\xfa\x00", "malformed envelope"),
    ],
)
def test_rows_that_cannot_be_processed_are_set_aside(
    engine: Engine, service: EncryptionService, value: bytes, reason: str
) -> None:
    job = make_job(engine, service)
    writes, bad = job._plan_rows([row(5, value)], JobReport("j"))
    assert writes == []
    [(r, why, version)] = bad
    assert r.pk == 5
    assert why.startswith(reason)
    assert version is None


def test_an_envelope_that_does_not_decrypt_is_set_aside_with_its_version(
    engine: Engine, service: EncryptionService
) -> None:
    job = make_job(engine, service)
    elsewhere = service.encrypt(b"x@y.z", CTX, associated_data=location_aad("other", "email"))
    writes, bad = job._plan_rows([row(6, elsewhere)], JobReport("j"))
    assert writes == []
    assert bad == [(bad[0][0], "DecryptionError", service.primary_version)]


def test_phase_two_refuses_plaintext(engine: Engine, service: EncryptionService) -> None:
    job = make_job(engine, service, forbid_plaintext=True)
    writes, bad = job._plan_rows([row(7, b"plain@text.io")], JobReport("j"))
    assert writes == []
    assert [why for _, why, _ in bad] == ["plaintext in phase 2"]
    assert job.job_name.endswith(":p2")


def test_bytes_columns_take_any_plaintext(engine: Engine, service: EncryptionService) -> None:
    job = make_job(engine, service, spec={"kind": "bytes", "index_column": None})
    writes, bad = job._plan_rows([row(8, b"\xff\x00\x01")], JobReport("j"))
    assert bad == []
    [w] = writes
    assert w.index is None
    assert w.new_value is not None
    assert service.decrypt(w.new_value, CTX, associated_data=AAD) == b"\xff\x00\x01"


def test_row_bound_columns_bind_each_value_to_its_row(
    engine: Engine, service: EncryptionService
) -> None:
    job = make_job(engine, service, spec={"bind_row": True})
    r = row(9, b"r@s.t")
    assert job._aad(r) == row_aad("people", "email", 9, "acme")
    assert job._aad(r) != AAD
    [w], _ = job._plan_rows([r], JobReport("j"))
    assert w.new_value is not None
    assert service.decrypt(w.new_value, CTX, associated_data=job._aad(r)) == b"r@s.t"


def test_reencryption_moves_older_envelopes_to_the_primary(
    engine: Engine, service: EncryptionService
) -> None:
    old = service.encrypt(b"o@l.d", CTX, associated_data=AAD)
    service.rotate()
    job = make_job(engine, service, mode="reencrypt", spec={"index_column": None})
    current = service.encrypt(b"n@e.w", CTX, associated_data=AAD)
    report = JobReport("j")
    [w], bad = job._plan_rows([row(10, old), row(11, current)], report)
    assert bad == []
    assert report.skipped == 1
    assert w.row.pk == 10
    assert w.new_value is not None
    assert parse_envelope(w.new_value).key_version == service.primary_version
    assert parse_envelope(old).key_version < service.primary_version
    assert service.decrypt(w.new_value, CTX, associated_data=AAD) == b"o@l.d"
    assert job.job_name == f"reencrypt:people.email:v{service.primary_version}"


@pytest.mark.parametrize(
    ("spec", "lengths"),
    [
        ({}, (16,)),
        ({"index_per_tenant": True, "tenant_id": None, "tenant_column": "tenant"}, (16,)),
        ({"index_length": 3}, (3,)),
        ({"kind": "bytes", "index_normalizer": ()}, (16,)),
    ],
)
def test_batch_index_values_equal_the_per_row_ones(
    engine: Engine, service: EncryptionService, spec: dict[str, Any], lengths: tuple[int]
) -> None:
    spec_kw = {"index_column": "email_bidx", "index_normalizer": EMAIL, **spec}
    tenant_id = spec_kw.pop("tenant_id", "acme")
    column = ColumnSpec("people", "email", tenant_id=tenant_id, **spec_kw)
    job = ColumnJob(engine, service, column)
    report = JobReport("j")
    rows = [
        row(i, f"  User{i}@Example.COM ".encode(), tenant=("t1", "t2", "t3")[i % 3])
        for i in range(12)
    ]
    writes, bad = job._plan_rows(rows, report)
    assert bad == [] and len(writes) == 12
    # One MAC call per key must give each row what the per-row computation gives.
    for w in writes:
        assert w.index == job._index_of(w.plaintext, w.row)
        assert w.index is not None and len(w.index) == 1 + lengths[0]
    if column.index_per_tenant:
        assert len({w.index for w in writes}) == 12
        same_value = [row(1, b"a@b.c", tenant="t1"), row(2, b"a@b.c", tenant="t2")]
        first, second = job._plan_rows(same_value, report)[0]
        assert first.index != second.index  # per-tenant keys differ
