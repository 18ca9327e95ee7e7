"""The encrypted column types without a database: arguments, serialization, bindings, ``==``.

The service is the embedded local one (key files in a temporary directory).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.dialects import sqlite

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import DecryptionError, InvalidArgumentError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy._common import FromRow, location_aad, row_aad
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex
from greenlang_crypto.sqlalchemy.types import (
    EncryptedBytes,
    EncryptedJSON,
    EncryptedString,
    EncryptedText,
    EncryptedType,
    SealedValue,
)

DIALECT = sqlite.dialect()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EncryptionService]:
    d = tmp_path / "keys"
    d.mkdir()
    LocalKeyProvider(d).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=d))
    yield svc
    svc.close()


def _sql(expr: Any) -> str:
    return str(expr.compile(dialect=DIALECT))


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize("data_class", ["", None, 3])
def test_data_class_must_be_a_non_empty_str(data_class: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="data_class"):
        EncryptedString(lambda: None, data_class=data_class, tenant_id="t1")  # type: ignore[arg-type]


def test_tenant_must_be_a_str_a_callable_or_from_row() -> None:
    with pytest.raises(InvalidArgumentError, match="tenant_id"):
        EncryptedString(lambda: None, data_class="pii", tenant_id=5)  # type: ignore[arg-type]


def test_a_row_tenant_makes_the_column_row_bound() -> None:
    assert EncryptedString(lambda: None, data_class="pii", tenant_id=FromRow("t")).bind_row
    assert not EncryptedString(lambda: None, data_class="pii", tenant_id="t1").bind_row
    assert EncryptedString(lambda: None, data_class="pii", tenant_id="t1", bind_row=True).bind_row


# -- serialization -------------------------------------------------------------------------


def test_string_is_byte_exact_utf8() -> None:
    typ = EncryptedString(lambda: None, data_class="pii", tenant_id="t1")
    value = "Zo\u00eb\x00 \u212b"  # a NUL and a non-NFC character, both kept
    assert typ.to_bytes(value) == value.encode("utf-8")
    assert typ.from_bytes(value.encode("utf-8")) == value
    assert typ.python_type is str
    assert isinstance(
        EncryptedText(lambda: None, data_class="pii", tenant_id="t1"), EncryptedString
    )


def test_string_refuses_non_str_lone_surrogates_and_non_utf8() -> None:
    typ = EncryptedString(lambda: None, data_class="pii", tenant_id="t1")
    with pytest.raises(TypeError, match="takes str"):
        typ.to_bytes(b"bytes")
    with pytest.raises(InvalidArgumentError, match="surrogate"):
        typ.to_bytes("\ud800")
    with pytest.raises(DecryptionError, match="UTF-8"):
        typ.from_bytes(b"\xff")


def test_bytes_accepts_bytes_like_values_only() -> None:
    typ = EncryptedBytes(lambda: None, data_class="pii", tenant_id="t1")
    for value in (b"ab", bytearray(b"ab"), memoryview(b"ab")):
        out = typ.to_bytes(value)
        assert out == b"ab" and type(out) is bytes
    with pytest.raises(TypeError, match="takes bytes"):
        typ.to_bytes("ab")
    assert typ.from_bytes(b"ab") == b"ab"
    assert typ.python_type is bytes


def test_json_is_compact_and_strict() -> None:
    typ = EncryptedJSON(lambda: None, data_class="pii", tenant_id="t1")
    doc = {"name": "Zo\u00eb", "tags": [1, 2.5, None, True]}
    assert typ.to_bytes(doc) == json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    assert typ.from_bytes(typ.to_bytes(doc)) == doc
    with pytest.raises(TypeError):
        typ.to_bytes({"when": object()})
    with pytest.raises(ValueError, match="JSON compliant"):
        typ.to_bytes(float("nan"))
    with pytest.raises(InvalidArgumentError, match="surrogate"):
        typ.to_bytes(["\ud800"])
    with pytest.raises(DecryptionError, match="JSON"):
        typ.from_bytes(b"{not json")
    assert typ.python_type is object


def test_the_base_type_has_no_serialization() -> None:
    typ = EncryptedType(lambda: None, data_class="pii", tenant_id="t1")
    with pytest.raises(NotImplementedError):
        typ.to_bytes("x")
    with pytest.raises(NotImplementedError):
        typ.from_bytes(b"x")


# -- binding to a location -----------------------------------------------------------------


def _users(*columns: Column[Any]) -> Table:
    return Table("app.users", MetaData(), Column("id", Integer, primary_key=True), *columns)


def test_the_type_learns_its_table_and_column_when_attached() -> None:
    typ = EncryptedString(lambda: None, data_class="pii", tenant_id="t1")
    with pytest.raises(InvalidArgumentError, match="not attached"):
        typ.associated_data_for()
    _users(Column("email", typ))
    assert typ.table_column == ("app.users", "email")
    assert typ.associated_data_for() == location_aad("app.users", "email")


def test_an_explicit_location_wins_over_the_column() -> None:
    typ = EncryptedString(lambda: None, data_class="pii", tenant_id="t1", location="legacy|mail")
    _users(Column("email", typ))
    assert typ.table_column == ("legacy", "mail")
    assert typ.associated_data_for() == location_aad("legacy", "mail")


def test_a_row_bound_value_is_bound_to_its_row_and_tenant() -> None:
    typ = EncryptedString(lambda: None, data_class="pii", tenant_id=FromRow("tenant"))
    _users(Column("tenant", String), Column("email", typ))
    assert typ.associated_data_for(7, "acme") == row_aad("app.users", "email", 7, "acme")
    assert typ.associated_data_for(7, "acme") != typ.associated_data_for(8, "acme")


def test_context_follows_the_tenant_spec() -> None:
    current = ["t1"]
    fixed = EncryptedString(lambda: None, data_class="pii", tenant_id="fixed")
    called = EncryptedString(lambda: None, data_class="pii", tenant_id=lambda: current[0])
    from_row = EncryptedString(lambda: None, data_class="pii", tenant_id=FromRow("tenant"))
    assert fixed.context_for().tenant_id == "fixed"
    assert fixed.context_for("other").tenant_id == "other"
    assert called.context_for().tenant_id == "t1"
    current[0] = "t2"
    assert called.context_for().tenant_id == "t2"
    assert called.context_for().data_class == "pii"
    with pytest.raises(InvalidArgumentError, match="ORM row"):
        from_row.context_for()
    assert from_row.context_for("t3").tenant_id == "t3"


# -- encryption ----------------------------------------------------------------------------


def test_a_value_round_trips_only_where_it_was_written(service: EncryptionService) -> None:
    typ = EncryptedString(service, data_class="pii", tenant_id="t1")
    _users(Column("email", typ))
    sealed = typ.encrypt_value("a@example.com")
    assert sealed is not None and sealed[0] == 0xFA
    assert typ.decrypt_value(sealed) == "a@example.com"
    moved = EncryptedString(service, data_class="pii", tenant_id="t1")
    _users(Column("backup_email", moved))
    with pytest.raises(DecryptionError):
        moved.decrypt_value(sealed)
    with pytest.raises(DecryptionError):
        typ.decrypt_value(sealed, tenant_id="t2")


def test_none_and_sealed_values_are_not_encrypted(service: EncryptionService) -> None:
    typ = EncryptedBytes(service, data_class="pii", tenant_id="t1")
    _users(Column("blob", typ))
    assert typ.encrypt_value(None) is None
    assert typ.process_bind_param(None, DIALECT) is None
    ciphertext = typ.encrypt_value(b"x")
    assert ciphertext is not None
    passed = typ.process_bind_param(SealedValue(ciphertext), DIALECT)
    assert passed == ciphertext and type(passed) is bytes
    assert typ.process_result_value(None, DIALECT) is None
    assert typ.process_result_value(ciphertext, DIALECT) == b"x"


def test_many_values_encrypt_in_one_call_like_one_by_one(service: EncryptionService) -> None:
    typ = EncryptedString(service, data_class="pii", tenant_id="t1")
    _users(Column("email", typ))
    values = ["a", "", "\u00e9"]
    sealed = typ.encrypt_many(values, [None] * len(values))
    assert [typ.decrypt_value(s) for s in sealed] == values
    assert typ.encrypt_many([], []) == []


def test_plaintext_is_read_as_stored_only_when_allowed(service: EncryptionService) -> None:
    strict = EncryptedString(service, data_class="pii", tenant_id="t1")
    phase1 = EncryptedString(service, data_class="pii", tenant_id="t1", allow_plaintext=True)
    _users(Column("a", strict), Column("b", phase1))
    assert phase1.decrypt_value(b"legacy") == "legacy"
    with pytest.raises(DecryptionError):
        strict.decrypt_value(b"legacy")


def test_row_bound_columns_are_written_only_through_the_orm(service: EncryptionService) -> None:
    typ = EncryptedString(service, data_class="pii", tenant_id="t1", bind_row=True)
    _users(Column("email", typ))
    with pytest.raises(InvalidArgumentError, match="ORM flush"):
        typ.process_bind_param("a", DIALECT)
    sealed = typ.encrypt_value("a", 1)
    assert sealed is not None
    # Read through Core, a row-bound value stays sealed: only the ORM knows its row.
    out = typ.process_result_value(sealed, DIALECT)
    assert type(out) is SealedValue and out == sealed
    assert typ.decrypt_value(sealed, 1) == "a"
    with pytest.raises(DecryptionError):
        typ.decrypt_value(sealed, 2)


# -- comparisons ---------------------------------------------------------------------------


def test_equality_goes_through_the_blind_index(service: EncryptionService) -> None:
    table = _users(
        Column("email", EncryptedString(service, data_class="pii", tenant_id="t1")),
        Column("email_bidx", BlindIndex("email")),
    )
    assert _sql(table.c.email == "a@example.com") == '"app.users".email_bidx = ?'
    assert _sql(table.c.email == None) == '"app.users".email IS NULL'  # noqa: E711
    assert _sql(table.c.email != None) == '"app.users".email IS NOT NULL'  # noqa: E711


def test_comparisons_without_an_index_are_refused() -> None:
    table = _users(Column("email", EncryptedString(lambda: None, data_class="pii", tenant_id="t")))
    with pytest.raises(InvalidArgumentError, match="blind index"):
        _ = table.c.email == "a@example.com"
    with pytest.raises(InvalidArgumentError, match="only =="):
        _ = table.c.email != "a@example.com"


# -- skip_erased, matches, column selects -------------------------------------------------


def test_skip_erased_defaults_to_raising() -> None:
    assert not EncryptedString(lambda: None, data_class="pii", tenant_id="t").skip_erased
    typ = EncryptedJSON(lambda: None, data_class="pii", tenant_id="t", skip_erased=True)
    assert typ.skip_erased


def test_matches_is_the_index_predicate_with_a_tenant(service: EncryptionService) -> None:
    table = _users(
        Column("tenant", String(20)),
        Column(
            "email",
            EncryptedString(service, data_class="pii", tenant_id=FromRow("tenant")),
        ),
        Column("email_bidx", BlindIndex("email", per_tenant=True)),
    )
    expr = table.c.email.matches("a@example.com", tenant_id="t1")
    assert _sql(expr) == '"app.users".email_bidx = ?'
    index = table.c.email_bidx.type
    (param,) = expr.compile(dialect=DIALECT).params.values()
    assert param == index.compute("a@example.com", tenant_id="t1")
    assert param != index.compute("a@example.com", tenant_id="t2")
    assert _sql(table.c.email.matches(None)) == '"app.users".email IS NULL'
    # == cannot pick the tenant's key: the error names the public form.
    with pytest.raises(InvalidArgumentError, match=r"email\.matches\(value, tenant_id=\.\.\.\)"):
        _ = table.c.email == "a@example.com"
    plain = _users(Column("email", EncryptedString(service, data_class="pii", tenant_id="t")))
    with pytest.raises(InvalidArgumentError, match="blind index"):
        plain.c.email.matches("a@example.com", tenant_id="t")


def test_row_bound_slots_find_the_binding_or_name_it() -> None:
    from sqlalchemy import func, select

    from greenlang_crypto.sqlalchemy.types import SealedColumnError, row_bound_slots

    typ = EncryptedString(lambda: None, data_class="pii", tenant_id=FromRow("tenant"))
    table = _users(Column("tenant", String(20)), Column("email", typ), Column("note", String(9)))
    c = table.c
    assert row_bound_slots([c.id, c.note]) == []
    assert row_bound_slots([c.email.label("e"), None, c.tenant, c.id]) == [(0, typ, [3], 2)]
    with pytest.raises(SealedColumnError) as err:
        row_bound_slots([c.id, c.email])
    assert err.value.columns == ("app.users.tenant",)
    assert isinstance(err.value, InvalidArgumentError)
    with pytest.raises(SealedColumnError) as err:
        row_bound_slots([c.email])
    assert err.value.columns == ("app.users.id", "app.users.tenant")
    with pytest.raises(SealedColumnError, match="expression"):
        row_bound_slots([c.id, c.tenant, func.max(c.email)])
    # Another FROM's key and tenant are not this column's binding.
    alias = table.alias("other")
    with pytest.raises(SealedColumnError):
        row_bound_slots([c.id, c.tenant, alias.c.email])
    sub = select(c.id, c.tenant, c.email).subquery()
    assert row_bound_slots([sub.c.email, sub.c.id, sub.c.tenant]) == [(0, typ, [1], 2)]


def test_core_selects_of_row_bound_columns_are_refused(service: EncryptionService) -> None:
    from sqlalchemy import LargeBinary, create_engine, insert, select, type_coerce

    from greenlang_crypto.sqlalchemy.types import SealedColumnError

    typ = EncryptedString(service, data_class="pii", tenant_id="t1", bind_row=True)
    table = Table(
        "notes",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("body", typ),
        Column("title", String(20)),
    )
    engine = create_engine("sqlite://")
    table.create(engine)
    try:
        sealed = typ.encrypt_value("secret", 1)
        with engine.begin() as conn:
            conn.execute(insert(table), [{"id": 1, "body": SealedValue(sealed), "title": "t"}])
            with pytest.raises(SealedColumnError) as err:
                conn.execute(select(table.c.body))
            assert err.value.columns == ("notes.id",)
            with pytest.raises(SealedColumnError, match="Session"):
                conn.execute(select(table.c.id, table.c.body))
            with pytest.raises(SealedColumnError, match="Session"):
                conn.execute(insert(table).returning(table.c.id, table.c.body), {"id": 2})
            assert conn.execute(select(table.c.title)).scalar() == "t"
            raw = conn.execute(select(type_coerce(table.c.body, LargeBinary))).scalar()
            assert raw == sealed and typ.decrypt_value(raw, 1) == "secret"
    finally:
        engine.dispose()
