"""What a column job works on and reports: the spec (also from a model) and the reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import GreenlangCryptoError, InvalidArgumentError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EMAIL, BlindIndex, EncryptedBytes, EncryptedString
from greenlang_crypto.sqlalchemy._common import FromRow
from greenlang_crypto.sqlalchemy._job_spec import (
    ColumnSpec,
    DryRunReport,
    JobReport,
    JobSpecMismatchError,
    PlaintextFoundError,
)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EncryptionService]:
    d = tmp_path / "keys"
    d.mkdir()
    LocalKeyProvider(d).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=d))
    yield svc
    svc.close()


def test_exactly_one_tenant_source() -> None:
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        ColumnSpec("t", "c")
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        ColumnSpec("t", "c", tenant_id="a", tenant_column="tenant")
    assert ColumnSpec("t", "c", tenant_column="tenant").tenant_id is None


def test_kind_is_str_or_bytes() -> None:
    with pytest.raises(InvalidArgumentError, match="kind"):
        ColumnSpec("t", "c", tenant_id="a", kind="json")
    assert ColumnSpec("t", "c", tenant_id="a", kind="bytes").kind == "bytes"


def test_plaintext_found_is_a_library_error() -> None:
    assert issubclass(PlaintextFoundError, GreenlangCryptoError)


def test_from_model_reads_the_column_type_and_its_blind_index(service: EncryptionService) -> None:
    md = MetaData()
    t = Table(
        "people",
        md,
        Column("pk", Integer, primary_key=True),
        Column("tenant", String(20)),
        Column(
            "email",
            EncryptedString(service, data_class="contact", tenant_id=FromRow("tenant")),
        ),
        Column("email_idx", BlindIndex("email", normalizer=EMAIL, length=12, per_tenant=True)),
    )
    spec = ColumnSpec.from_model(t.c.email, version_column="email_kv")
    assert (spec.table, spec.column, spec.pk) == ("people", "email", "pk")
    assert spec.data_class == "contact"
    assert spec.tenant_column == "tenant"
    assert spec.tenant_id is None
    assert spec.bind_row  # a row tenant binds to the row
    assert spec.kind == "str"
    assert spec.version_column == "email_kv"
    assert spec.index_column == "email_idx"
    assert spec.index_purpose == "people.email"
    assert spec.index_normalizer == EMAIL
    assert (spec.index_length, spec.index_per_tenant) == (12, True)


def test_from_model_with_a_fixed_tenant_and_overrides(service: EncryptionService) -> None:
    md = MetaData()
    t = Table(
        "docs",
        md,
        Column("id", Integer, primary_key=True),
        Column("body", EncryptedBytes(service, data_class="docs", tenant_id="acme")),
        schema="app",
    )
    spec = ColumnSpec.from_model(t.c.body, version_column="body_kv", data_class="docs")
    assert (spec.table, spec.column, spec.kind) == ("app.docs", "body", "bytes")
    assert spec.tenant_id == "acme"
    assert spec.data_class == "docs"  # repeating the model's value is fine
    assert spec.version_column == "body_kv"
    assert spec.index_column is None
    assert spec.model is t.c.body


def test_overrides_that_contradict_the_model_are_refused(service: EncryptionService) -> None:
    md = MetaData()
    t = Table(
        "docs",
        md,
        Column("id", Integer, primary_key=True),
        Column("tenant", String(20)),
        Column("body", EncryptedString(service, data_class="docs", tenant_id=FromRow("tenant"))),
        Column("body_idx", BlindIndex("body", normalizer=EMAIL)),
    )
    with pytest.raises(JobSpecMismatchError, match=r"data class \(--data-class\)") as info:
        ColumnSpec.from_model(t.c.body, data_class="other")
    assert "given 'other', model 'docs'" in str(info.value)
    with pytest.raises(JobSpecMismatchError, match=r"row binding \(--bind-row\)"):
        ColumnSpec.from_model(t.c.body, bind_row=False)
    with pytest.raises(JobSpecMismatchError, match=r"fixed tenant \(--tenant\)"):
        ColumnSpec.from_model(t.c.body, tenant_id="acme")
    with pytest.raises(JobSpecMismatchError, match=r"index normalizer.*given \(\), model") as n:
        ColumnSpec.from_model(t.c.body, index_normalizer=())
    assert str(n.value).endswith("given (), model (strip, nfc, casefold)")
    with pytest.raises(JobSpecMismatchError, match=r"index purpose"):
        ColumnSpec.from_model(t.c.body, index_purpose="elsewhere")
    assert issubclass(JobSpecMismatchError, InvalidArgumentError)
    # The model's own values, and the default purpose spelled out, are no contradiction.
    spec = ColumnSpec.from_model(
        t.c.body, bind_row=True, tenant_column="tenant", index_purpose="docs.body"
    )
    assert spec.bind_row and spec.effective_index_purpose() == "docs.body"


def test_differences_name_every_setting_and_ignore_what_is_not_given(
    service: EncryptionService,
) -> None:
    md = MetaData()
    t = Table(
        "p",
        md,
        Column("id", Integer, primary_key=True),
        Column("v", EncryptedString(service, data_class="d", tenant_id="x")),
    )
    spec = ColumnSpec.from_model(t.c.v)
    assert spec.differences({"table": None, "bind_row": None, "version_column": "kv"}) == []
    found = spec.differences({"table": "q", "pk": "uid", "kind": "bytes", "index_length": 8})
    assert [f.split(":")[0] for f in found] == [
        "table (--table)",
        "primary key (--pk)",
        "value kind (--kind)",
        "index length (--index-length)",
    ]
    with pytest.raises(InvalidArgumentError, match="no field 'colour'"):
        spec.differences({"colour": "red"})
    # The model reference is no part of the spec's identity.
    assert spec == ColumnSpec("p", "v", data_class="d", tenant_id="x")
    assert "model" not in repr(spec)


def test_from_row_through_a_mapper_uses_the_attribute_s_column(
    service: EncryptionService,
) -> None:
    class Base(DeclarativeBase):
        pass

    class Account(Base):
        __tablename__ = "accounts"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        # The attribute and its column are named differently.
        org: Mapped[str] = mapped_column("org_id", String(20))
        secret: Mapped[str] = mapped_column(
            EncryptedString(service, data_class="d", tenant_id=FromRow("org"))
        )

    spec = ColumnSpec.from_model(Account.secret)
    assert (spec.table, spec.column, spec.tenant_column, spec.bind_row) == (
        "accounts",
        "secret",
        "org_id",
        True,
    )
    md = MetaData()
    t = Table(
        "lost",
        md,
        Column("id", Integer, primary_key=True),
        Column("w", EncryptedString(service, data_class="d", tenant_id=FromRow("nobody"))),
    )
    with pytest.raises(InvalidArgumentError, match="FromRow\\('nobody'\\) names no column"):
        ColumnSpec.from_model(t.c.w)


def test_from_model_refuses_what_a_job_cannot_migrate(service: EncryptionService) -> None:
    md = MetaData()
    t = Table(
        "bad",
        md,
        Column("a", Integer, primary_key=True),
        Column("b", Integer, primary_key=True),
        Column("plain", String(10)),
        Column("v", EncryptedString(service, data_class="d", tenant_id="x")),
    )
    with pytest.raises(InvalidArgumentError, match="not an encrypted column"):
        ColumnSpec.from_model(t.c.plain)
    with pytest.raises(InvalidArgumentError, match="single-column primary key"):
        ColumnSpec.from_model(t.c.v)
    md2 = MetaData()
    t2 = Table(
        "cb",
        md2,
        Column("id", Integer, primary_key=True),
        Column("w", EncryptedString(service, data_class="d", tenant_id=lambda: "x")),
    )
    with pytest.raises(InvalidArgumentError, match="callable tenant"):
        ColumnSpec.from_model(t2.c.w)


def test_from_model_refuses_a_type_bound_to_another_location(service: EncryptionService) -> None:
    # A table renamed from `users` keeps its values' binding with location="users|email".
    # The job names its table and column once, for both the rows it writes and the binding:
    # taken from the location it would write into `users.email` (another table, perhaps
    # the application's plaintext one), and taken from the table it would bind every value
    # to the wrong place. It is refused, naming both.
    md = MetaData()
    t = Table(
        "accounts",
        md,
        Column("id", Integer, primary_key=True),
        Column(
            "email_enc",
            EncryptedString(service, data_class="pii", tenant_id="acme", location="users|email"),
        ),
    )
    with pytest.raises(InvalidArgumentError, match="location") as refused:
        ColumnSpec.from_model(t.c.email_enc)
    assert "accounts.email_enc" in str(refused.value) and "users.email" in str(refused.value)
    # A location that names the column's own place is no override.
    md2 = MetaData()
    t2 = Table(
        "users",
        md2,
        Column("id", Integer, primary_key=True),
        Column(
            "email",
            EncryptedString(service, data_class="pii", tenant_id="acme", location="users|email"),
        ),
    )
    assert ColumnSpec.from_model(t2.c.email).table == "users"


def test_dry_run_report_counts_below_a_version() -> None:
    report = DryRunReport("t", "c", null=2, plaintext=3)
    report.by_key_version.update({1: 4, 2: 5, 3: 6})
    report.undecryptable["DecryptionError"] += 1
    report.by_index_version.update({2: 7, 0: 1})
    assert report.rows_below(3) == 3 + 4 + 5
    assert report.rows_below(1) == 3
    assert report.as_dict() == {
        "table": "t",
        "column": "c",
        "null": 2,
        "plaintext": 3,
        "by_key_version": {1: 4, 2: 5, 3: 6},
        "undecryptable": {"DecryptionError": 1},
        "by_index_version": {0: 1, 2: 7},
    }
    assert list(report.as_dict()["by_key_version"]) == [1, 2, 3]


def test_job_report_is_ok_only_when_nothing_is_left() -> None:
    report = JobReport("job")
    assert not report.ok  # not counted yet
    assert report.rows_per_second == 0.0
    report.remaining = 0
    assert report.ok
    report.quarantined.append(("7", "plaintext in phase 2", None))
    assert not report.ok
    report.scanned, report.seconds = 50, 2.0
    assert report.rows_per_second == 25.0
    report.written, report.skipped, report.contended, report.retries = 40, 9, 3, 1
    assert report.summary() == {
        "job": "job",
        "scanned": 50,
        "written": 40,
        "skipped": 9,
        "quarantined": 1,
        "remaining": 0,
        "contended": 3,
        "retries": 1,
    }


def test_reports_do_not_share_their_counters() -> None:
    a, b = DryRunReport("t", "c"), DryRunReport("t", "c")
    a.by_key_version[1] += 1
    assert b.by_key_version == Counter()
    x, y = JobReport("j"), JobReport("j")
    x.quarantined.append(("1", "r", None))
    assert y.quarantined == []
