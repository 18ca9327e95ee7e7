"""Encrypted column types on SQLite and PostgreSQL: None, empty and Unicode values, copies into
another column, table or tenant, missing key version vs tag mismatch, ORM row binding."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    text,
    true,
    type_coerce,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column

from greenlang_crypto import parse_envelope
from greenlang_crypto.exceptions import (
    DecryptionError,
    InvalidArgumentError,
    KeyRetiredError,
    KeyVersionUnavailableError,
)
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import (
    EncryptedBytes,
    EncryptedJSON,
    EncryptedString,
    EncryptedText,
    FromRow,
    SealedColumnError,
    SealedValue,
)

pytestmark = pytest.mark.integration

UNICODE = [
    "plain",
    "emoji 🔐🧪",
    "RTL עברית العربية",
    "nul\x00inside",
    "e\u0301",  # NFD
    "\u00e9",  # NFC: kept byte-exact, distinct from NFD
    "x" * 5000,
]


def _table(svc: Any, name: str, md: MetaData, **kw: Any) -> Table:
    return Table(
        name,
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("s", EncryptedString(svc, data_class="pii", tenant_id="acme", **kw)),
        Column("t", EncryptedText(svc, data_class="pii", tenant_id="acme")),
        Column("b", EncryptedBytes(svc, data_class="secret", tenant_id="acme")),
        Column("j", EncryptedJSON(svc, data_class="pii", tenant_id="acme")),
        Column("plain", String(50)),
    )


@pytest.fixture
def table(engine: Engine, service: EncryptionService, table_name: str) -> Any:
    md = MetaData()
    t = _table(lambda: service, table_name, md)
    md.create_all(engine)
    yield t
    md.drop_all(engine)


def test_none_is_null_in_and_out(engine: Engine, table: Table) -> None:
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "s": None, "t": None, "b": None, "j": None}])
        raw = conn.execute(text(f"SELECT s, t, b, j FROM {table.name}")).one()
        assert tuple(raw) == (None, None, None, None)  # never an encrypted "None"
        assert conn.execute(select(table.c.s, table.c.b, table.c.j)).one() == (None, None, None)
        assert conn.execute(select(table.c.id).where(table.c.s == None)).scalar() == 1  # noqa: E711


def test_empty_values_are_distinct_from_null(engine: Engine, table: Table) -> None:
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "s": "", "b": b"", "j": ""}])
        raw_s, raw_b = conn.execute(text(f"SELECT s, b FROM {table.name}")).one()
        assert raw_s is not None and bytes(raw_s)[0] == 0xFA
        assert bytes(raw_b)[0] == 0xFA
        assert conn.execute(select(table.c.s, table.c.b, table.c.j)).one() == ("", b"", "")


def test_unicode_round_trips_byte_exact(engine: Engine, table: Table) -> None:
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": i, "s": v, "t": v} for i, v in enumerate(UNICODE)])
        got = dict(conn.execute(select(table.c.id, table.c.s)).all())
    for i, v in enumerate(UNICODE):
        assert got[i] == v and got[i].encode() == v.encode()
    assert got[4] != got[5]  # NFD and NFC stay distinct


def test_lone_surrogate_is_a_typed_value_error(engine: Engine, table: Table) -> None:
    with pytest.raises(StatementError) as err, engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "s": "\ud800"}])
    assert isinstance(err.value.orig, InvalidArgumentError)
    assert isinstance(err.value.orig, ValueError)


def test_no_repr_coercion_of_non_strings(engine: Engine, table: Table) -> None:
    with pytest.raises(StatementError) as err, engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "s": 42}])
    assert isinstance(err.value.orig, TypeError)


def test_bytes_and_json_round_trip(engine: Engine, table: Table) -> None:
    doc = {"a": [1, 2.5, None, True], "ü": "🔐"}
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "b": b"\x00\xfa\xff", "j": doc}])
        assert conn.execute(select(table.c.b, table.c.j)).one() == (b"\x00\xfa\xff", doc)


def test_equality_without_blind_index_is_refused(table: Table) -> None:
    with pytest.raises(InvalidArgumentError):
        _ = table.c.s == "x"


def _raw(engine: Engine, table: Table, col: str, pk: int) -> bytes:
    with engine.connect() as conn:
        return bytes(conn.execute(text(f"SELECT {col} FROM {table.name} WHERE id = {pk}")).scalar())


def _set_raw(engine: Engine, table: Table, col: str, pk: int, value: bytes) -> None:
    with engine.begin() as conn:
        conn.execute(update(table).where(table.c.id == pk).values({col: SealedValue(value)}))


def test_copy_into_another_column_or_table_fails(
    engine: Engine, table: Table, service: EncryptionService, table_name: str
) -> None:
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "s": "secret", "t": "other"}])
    env = _raw(engine, table, "s", 1)
    _set_raw(engine, table, "t", 1, env)  # same row, another column
    with pytest.raises(DecryptionError), engine.connect() as conn:
        conn.execute(select(table.c.t)).all()
    md = MetaData()
    other = _table(service, table_name + "_b", md)
    md.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(other), [{"id": 1, "s": SealedValue(env)}])
        with pytest.raises(DecryptionError), engine.connect() as conn:
            conn.execute(select(other.c.s)).all()
    finally:
        md.drop_all(engine)


def test_another_tenant_cannot_decrypt(
    engine: Engine, service: EncryptionService, table_name: str
) -> None:
    md = MetaData()
    t = Table(
        table_name,
        md,
        Column("id", Integer, primary_key=True),
        Column("s", EncryptedString(service, data_class="pii", tenant_id="acme")),
    )
    md.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(insert(t), [{"id": 1, "s": "acme secret"}])
        md2 = MetaData()
        t2 = Table(
            table_name,
            md2,
            Column("id", Integer, primary_key=True),
            Column("s", EncryptedString(service, data_class="pii", tenant_id="evil")),
        )
        with pytest.raises(DecryptionError), engine.connect() as conn:
            conn.execute(select(t2.c.s)).all()
    finally:
        md.drop_all(engine)


def test_missing_key_version_vs_tag_mismatch(
    engine: Engine, table: Table, service: EncryptionService
) -> None:
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "s": "v1 value"}, {"id": 2, "s": "tampered"}])
    env = bytearray(_raw(engine, table, "s", 2))
    env[-1] ^= 1
    _set_raw(engine, table, "s", 2, bytes(env))
    with pytest.raises(DecryptionError) as tag_err, engine.connect() as conn:
        conn.execute(select(table.c.s).where(table.c.id == 2)).all()
    assert type(tag_err.value) is DecryptionError
    service.rotate()
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 3, "s": "v2 value"}])
    assert parse_envelope(_raw(engine, table, "s", 3)).key_version == 2
    service.retire_versions_below(2, delete_stored_deks=True)
    with pytest.raises((KeyRetiredError, KeyVersionUnavailableError)) as ver_err:
        with engine.connect() as conn:
            conn.execute(select(table.c.s).where(table.c.id == 1)).all()
    assert ver_err.value.key_version == 1


# -- ORM row binding --------------------------------------------------------------------


def _models(svc: Any, suffix: str) -> tuple[type[DeclarativeBase], Any, Any]:
    class Base(DeclarativeBase):
        pass

    class Account(Base):
        __tablename__ = f"accounts_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
        tenant_id: Mapped[str] = mapped_column(String(40))
        email: Mapped[str | None] = mapped_column(
            EncryptedString(lambda: svc, data_class="pii", tenant_id=FromRow("tenant_id"))
        )
        phone: Mapped[str | None] = mapped_column(
            EncryptedString(svc, data_class="pii", tenant_id="fixed", bind_row=True)
        )
        note: Mapped[str | None] = mapped_column(
            EncryptedString(svc, data_class="pii", tenant_id="fixed")
        )

    class Counter(Base):
        __tablename__ = f"counters_{suffix}"
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
        secret: Mapped[str | None] = mapped_column(
            EncryptedString(svc, data_class="pii", tenant_id="t", bind_row=True)
        )

    return Base, Account, Counter


def test_row_binding_rejects_a_copy_into_another_row_or_tenant(
    engine: Engine, service: EncryptionService, unique: Any
) -> None:
    Base, Account, _ = _models(service, unique("x"))
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as s:
            a = Account(tenant_id="t1", email="a@x.org", phone="+1 555", note=None)
            b = Account(tenant_id="t1", email="b@x.org", phone="+1 666", note="n")
            c = Account(tenant_id="t2", email="c@x.org", phone=None, note=None)
            s.add_all([a, b, c])
            s.commit()
            assert a.email == "a@x.org"  # plaintext restored after the flush (and reload)
            ids = (a.id, b.id, c.id)
        with Session(engine) as s:
            loaded = {x.id: x for x in s.scalars(select(Account))}
            assert loaded[ids[0]].email == "a@x.org" and loaded[ids[1]].phone == "+1 666"
            loaded[ids[1]].email = "b2@x.org"
            s.commit()
        table = Base.metadata.tables[Account.__tablename__]
        with engine.connect() as conn:
            # Core never returns a row-bound value as if it were one: it refuses the select,
            # and hands out the stored envelope only when asked for it by type.
            with pytest.raises(SealedColumnError, match="Session"):
                conn.execute(select(table.c.id, table.c.tenant_id, table.c.email))
            envelopes = select(
                table.c.id,
                type_coerce(table.c.email, LargeBinary).label("email"),
                type_coerce(table.c.phone, LargeBinary).label("phone"),
            )
            raw = {r.id: r for r in conn.execute(envelopes)}
        assert parse_envelope(bytes(raw[ids[0]].email)).key_version >= 1
        for col, src, dst in (("email", 0, 1), ("phone", 0, 1), ("email", 0, 2)):
            with engine.begin() as conn:
                conn.execute(
                    update(table)
                    .where(table.c.id == ids[dst])
                    .values({col: SealedValue(bytes(getattr(raw[ids[src]], col)))})
                )
            with Session(engine) as s, pytest.raises(DecryptionError):
                s.get(Account, ids[dst])
    finally:
        Base.metadata.drop_all(engine)


def test_row_binding_changes_of_tenant_reencrypt(
    engine: Engine, service: EncryptionService, unique: Any
) -> None:
    Base, Account, _ = _models(service, unique("y"))
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as s:
            a = Account(tenant_id="t1", email="move@x.org", phone="1")
            s.add(a)
            s.commit()
            a.tenant_id = "t9"
            s.commit()
            pk = a.id
        with Session(engine) as s:
            got = s.get(Account, pk)
            assert got is not None and (got.email, got.tenant_id) == ("move@x.org", "t9")
    finally:
        Base.metadata.drop_all(engine)


def test_row_binding_requires_client_side_pk(
    engine: Engine, service: EncryptionService, unique: Any
) -> None:
    Base, _, Counter = _models(service, unique("z"))
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as s:
            s.add(Counter(secret="x"))
            with pytest.raises(InvalidArgumentError, match="client-side primary key"):
                s.flush()
            s.rollback()
            s.add(Counter(id=7, secret="x"))
            s.commit()
            s.expunge_all()
            got = s.get(Counter, 7)
            assert got is not None and got.secret == "x"
        with pytest.raises(StatementError) as err, engine.begin() as conn:
            conn.execute(insert(Base.metadata.tables[Counter.__tablename__]), [{"secret": "x"}])
        assert isinstance(err.value.orig, InvalidArgumentError)
    finally:
        Base.metadata.drop_all(engine)


# -- column selects of row-bound columns ---------------------------------------------------


def test_column_selects_decrypt_with_the_binding_or_name_what_is_missing(
    engine: Engine, service: EncryptionService, unique: Any
) -> None:
    Base, Account, _ = _models(service, unique("cols"))
    Base.metadata.create_all(engine)
    name = Account.__tablename__
    try:
        with Session(engine) as s:
            s.add_all(
                [
                    Account(tenant_id="t1", email="a@x.org", phone="+1 555", note="n1"),
                    Account(tenant_id="t2", email=None, phone="+1 666", note=None),
                ]
            )
            s.commit()
        with Session(engine) as s:
            # No silent ciphertext: the primary key and the tenant are named when missing.
            with pytest.raises(SealedColumnError) as err:
                s.execute(select(Account.id, Account.email))
            assert err.value.columns == (f"{name}.tenant_id",)
            assert f"add {name}.tenant_id to the select" in str(err.value)
            with pytest.raises(SealedColumnError) as err:
                s.execute(select(Account.tenant_id, Account.email))
            assert err.value.columns == (f"{name}.id",)
            with pytest.raises(SealedColumnError) as err:
                s.scalars(select(Account.phone))  # bound to the row without a row tenant
            assert err.value.columns == (f"{name}.id",)
            with pytest.raises(SealedColumnError, match="expression"):
                s.execute(select(Account.id, Account.tenant_id, func.max(Account.email)))
            # With the binding columns in the row (in any order, labelled or not): plaintext.
            rows = s.execute(
                select(
                    Account.email.label("mail"), Account.tenant_id, Account.phone, Account.id
                ).order_by(Account.tenant_id)
            ).all()
            assert [(r.mail, r.tenant_id, r.phone) for r in rows] == [
                ("a@x.org", "t1", "+1 555"),
                (None, "t2", "+1 666"),
            ]
            # Through a subquery and an alias, the binding is that of the same FROM.
            sub = select(Account.id, Account.tenant_id, Account.email).subquery()
            got = {r.email for r in s.execute(select(sub.c.email, sub.c.id, sub.c.tenant_id))}
            assert got == {"a@x.org", None}
            other = aliased(Account)
            with pytest.raises(SealedColumnError):
                # The alias's email with the base entity's key and tenant: not its binding.
                s.execute(select(Account.id, Account.tenant_id, other.email).join(other, true()))
            got = {r.email for r in s.execute(select(other.id, other.tenant_id, other.email))}
            assert got == {"a@x.org", None}
            # Plain (table-bound) columns decrypt as they do for entities; entity loads too.
            assert sorted(filter(None, s.scalars(select(Account.note)))) == ["n1"]
            assert {a.email for a in s.scalars(select(Account))} == {"a@x.org", None}
            mixed = s.execute(select(Account, Account.id, Account.tenant_id, Account.email))
            assert {(a.email, e) for a, _, _, e in mixed} == {("a@x.org", "a@x.org"), (None, None)}
    finally:
        Base.metadata.drop_all(engine)
