"""The registry of encrypted columns: built from models, by hand, and what it refuses."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EMAIL, BlindIndex, EncryptedBytes, EncryptedString
from greenlang_crypto.sqlalchemy._common import FromRow
from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec
from greenlang_crypto.sqlalchemy._registry import ColumnRegistry


def _models(service: EncryptionService) -> type[DeclarativeBase]:
    class Base(DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = "people"
        id: Mapped[int] = mapped_column(primary_key=True)
        org: Mapped[str] = mapped_column("org_id", String(20))
        email: Mapped[str] = mapped_column(
            EncryptedString(service, data_class="contact", tenant_id=FromRow("org"))
        )
        email_idx: Mapped[bytes] = mapped_column(BlindIndex("email", normalizer=EMAIL))
        name: Mapped[str] = mapped_column(String(40))

    class Doc(Base):
        __tablename__ = "docs"
        __table_args__ = ({"schema": "app"},)
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[bytes] = mapped_column(EncryptedBytes(service, data_class="d", tenant_id="t"))

    # A table no mapper covers, and one a column job cannot take (a callable tenant).
    Table(
        "raw",
        Base.metadata,
        Column("id", Integer, primary_key=True),
        Column("secret", EncryptedString(service, data_class="s", tenant_id="t")),
    )
    Table(
        "dyn",
        Base.metadata,
        Column("id", Integer, primary_key=True),
        Column("v", EncryptedString(service, data_class="s", tenant_id=lambda: "t")),
    )
    return Base


def test_every_encrypted_column_of_the_models_with_its_blind_index(
    service: EncryptionService,
) -> None:
    base = _models(service)
    reg = ColumnRegistry.from_metadata(base, version_columns={"app.docs.body": "body_kv"})
    assert sorted(reg.names()) == ["app.docs.body", "people.email", "raw.secret"]
    email = reg.get("people.email")
    assert email is not None
    # Read through the mapper: the FromRow attribute `org` is the column org_id.
    assert email.tenant_column == "org_id" and email.bind_row
    assert (email.index_column, email.index_normalizer) == ("email_idx", EMAIL)
    assert email.data_class == "contact"
    body = reg.get("app.docs.body")
    assert body is not None and body.kind == "bytes" and body.version_column == "body_kv"
    assert reg.get("people.name") is None
    assert list(reg.unsupported) == ["dyn.v"]
    assert "callable tenant" in reg.unsupported["dyn.v"]
    assert len(reg) == 3 and list(reg) == list(reg.specs)
    assert "people.email" in repr(reg) and "dyn.v" in repr(reg)


def test_an_orm_registry_and_a_metadata_give_the_same_columns(service: EncryptionService) -> None:
    base = _models(service)
    from_registry = ColumnRegistry.from_metadata(base.registry)
    assert isinstance(base.registry, registry)
    assert sorted(from_registry.names()) == sorted(ColumnRegistry.from_metadata(base).names())
    # A bare MetaData reads tables: the row tenant's column is named by its attribute there,
    # and `org` is not a column of the table: the column is unsupported, with the reason.
    from_md = ColumnRegistry.from_metadata(base.metadata)
    assert "people.email" in from_md.unsupported
    assert "FromRow('org')" in from_md.unsupported["people.email"]
    assert "raw.secret" in from_md.names()


def test_bad_sources_and_unknown_version_columns_are_refused(service: EncryptionService) -> None:
    with pytest.raises(InvalidArgumentError, match="declarative base"):
        ColumnRegistry.from_metadata(object())
    base = _models(service)
    with pytest.raises(InvalidArgumentError, match=r"people\.name"):
        ColumnRegistry.from_metadata(base, version_columns={"people.name": "x"})


def test_columns_added_by_hand(service: EncryptionService) -> None:
    md = MetaData()
    t = Table(
        "notes",
        md,
        Column("id", Integer, primary_key=True),
        Column("text", EncryptedString(service, data_class="n", tenant_id="t")),
        Column("plain", String(10)),
    )
    reg = ColumnRegistry()
    spec = reg.add(t.c.text, version_column="text_kv")
    assert spec.version_column == "text_kv" and reg.names() == ["notes.text"]
    assert reg.add(t.c.text, version_column="text_kv") == spec  # again: no change
    with pytest.raises(InvalidArgumentError, match="other settings"):
        reg.add(t.c.text)  # another version column
    with pytest.raises(InvalidArgumentError, match="not an encrypted column"):
        reg.add(t.c.plain)
    hand = ColumnSpec("legacy", "blob", tenant_id="t", kind="bytes")
    assert reg.add(hand) is hand
    with pytest.raises(InvalidArgumentError, match="own version_column"):
        reg.add(hand, version_column="v")
    with pytest.raises(InvalidArgumentError, match="other settings"):
        reg.add(ColumnSpec("legacy", "blob", tenant_id="u", kind="bytes"))
    assert reg.names() == ["notes.text", "legacy.blob"]


def test_adding_by_hand_settles_an_unsupported_column(service: EncryptionService) -> None:
    base = _models(service)
    reg = ColumnRegistry.from_metadata(base)
    reg.add(ColumnSpec("dyn", "v", tenant_id="t", data_class="s"))
    assert reg.unsupported == {}
