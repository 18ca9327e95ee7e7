"""The column job itself without a database: its arguments, names, counting and retirement.

Runs against PostgreSQL are in tests/integration/sqlalchemy (test_migrate.py and others).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from greenlang_crypto import EncryptionContext
from greenlang_crypto.exceptions import InvalidArgumentError, KeyStateError
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EMAIL, _job_spec, migrate
from greenlang_crypto.sqlalchemy._common import location_aad
from greenlang_crypto.sqlalchemy._job_spec import DryRunReport, _Row

CTX = EncryptionContext(tenant_id="acme", data_class="pii")
AAD = location_aad("people", "email")


def spec(**kw: Any) -> migrate.ColumnSpec:
    return migrate.ColumnSpec("people", "email", tenant_id="acme", **kw)


def test_the_module_offers_the_public_names() -> None:
    assert migrate.__all__ == [
        "ColumnJob",
        "ColumnSpec",
        "DryRunReport",
        "JobReport",
        "PlaintextFoundError",
        "ciphertext_check",
        "ciphertext_check_name",
        "enforce_ciphertext",
        "retire_if_clear",
    ]
    for name in ("ColumnSpec", "DryRunReport", "JobReport", "PlaintextFoundError", "Progress"):
        assert getattr(migrate, name) is getattr(_job_spec, name)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"mode": "rotate"}, "mode"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 10_001}, "batch_size"),
        ({"state_schema": "Encryption"}, "state_schema"),
        ({"state_schema": "a;b"}, "state_schema"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"wait_leases": -1}, "wait_leases"),
        ({"max_retries": -1}, "max_retries"),
        ({"job_name": "a@b"}, "'@'"),
    ],
)
def test_arguments_are_checked(
    engine: Engine, service: EncryptionService, kw: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        migrate.ColumnJob(engine, service, spec(), **kw)


def test_jobs_run_on_postgresql_only(tmp_path: Path, service: EncryptionService) -> None:
    sqlite = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(InvalidArgumentError, match="PostgreSQL"):
        migrate.ColumnJob(sqlite, service, spec())
    sqlite.dispose()


def test_defaults_and_derived_names(engine: Engine, service: EncryptionService) -> None:
    job = migrate.ColumnJob(engine, service, spec(), lease_seconds=20.0)
    assert job.job_name == job.job_base == "encrypt:people.email:p1"
    assert job.run_id is None
    assert job.wait_leases == 20.0 + 10.0
    assert job.worker.startswith(f"{socket.gethostname()}:")
    assert job.ranges == 1
    p2 = migrate.ColumnJob(engine, service, spec(), forbid_plaintext=True, ranges=0, run_id="r1")
    assert p2.job_base == "encrypt:people.email:p2"
    assert p2.job_name == "encrypt:people.email:p2@r1"
    assert p2.ranges == 1
    indexed = migrate.ColumnJob(
        engine,
        service,
        spec(index_column="email_bidx", index_normalizer=EMAIL),
        mode="reencrypt",
        wait_leases=0,
    )
    assert indexed.job_name == f"reencrypt:people.email:v{service.primary_version}:i1"
    assert indexed.wait_leases == 0


def test_dry_run_counting_of_each_kind_of_row(engine: Engine, service: EncryptionService) -> None:
    job = migrate.ColumnJob(
        engine, service, spec(index_column="email_bidx", index_normalizer=EMAIL)
    )
    good = service.encrypt(b"a@b.c", CTX, associated_data=AAD)
    foreign = service.encrypt(b"a@b.c", CTX, associated_data=location_aad("x", "y"))
    out = DryRunReport("people", "email")
    rows = [
        _Row(1, "1", None, "acme", None),
        _Row(2, "2", b"plain", "acme", None),
        _Row(3, "3", good, "acme", b"\x01ix"),
        _Row(4, "4", foreign, "acme", b"\x01ix"),
        _Row(5, "5", b"\xfa\x00", "acme", None),
    ]
    for r in rows:
        job._count(r, out, verify=True)
    assert out.null == 1
    assert out.plaintext == 1
    assert out.by_key_version == {service.primary_version: 2}
    assert out.by_index_version == {0: 2, 1: 2}
    assert sum(out.undecryptable.values()) == 2
    assert out.undecryptable["DecryptionError"] == 1
    unverified = DryRunReport("people", "email")
    job._count(rows[3], unverified, verify=False)
    assert not unverified.undecryptable


class FakeJob:
    """What retire_if_clear uses of a job: its spec, a dry run and the service."""

    def __init__(self, table: str, below: int, service: Any) -> None:
        self.spec = migrate.ColumnSpec(table, "c", tenant_id="t")
        self.service = service
        self._below = below

    def dry_run(self, *, verify: bool = True) -> DryRunReport:
        assert verify is False
        report = DryRunReport(self.spec.table, "c")
        report.by_key_version[1] = self._below
        return report


class RetiringService:
    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def retire_versions_below(self, version: int, *, delete_stored_deks: bool) -> None:
        self.calls.append((version, delete_stored_deks))


def test_retire_if_clear_retires_only_when_every_column_is_clear() -> None:
    svc = RetiringService()
    jobs: Any = [FakeJob("a", 0, svc), FakeJob("b", 3, svc)]
    with pytest.raises(KeyStateError, match="rows remain below version 2"):
        migrate.retire_if_clear(jobs, 2)
    assert svc.calls == []
    clear: Any = [FakeJob("a", 0, svc), FakeJob("b", 0, svc)]
    assert migrate.retire_if_clear(clear, 2, delete_stored_deks=True) == {"a.c": 0, "b.c": 0}
    assert svc.calls == [(2, True)]


def test_the_phase_two_constraint_has_one_name_and_keeps_it_under_naming_conventions() -> None:
    from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import AddConstraint

    assert migrate.ciphertext_check_name("email") == "glc_email_is_envelope"
    md = MetaData(naming_convention={"ck": "ck_%(table_name)s_%(constraint_name)s"})
    table = Table(
        "people",
        md,
        Column("id", Integer, primary_key=True),
        Column("Mail", LargeBinary),
        migrate.ciphertext_check("Mail"),
    )
    (check,) = [c for c in table.constraints if c.name and "envelope" in c.name]
    ddl = str(AddConstraint(check).compile(dialect=postgresql.dialect()))
    assert 'CONSTRAINT "glc_Mail_is_envelope" CHECK' in ddl
    assert '"Mail" IS NULL OR (octet_length("Mail") > 0 AND get_byte("Mail", 0) = 250)' in ddl
