"""Blind indexes: normalization, per-column keys, truncation, constant-time compares, NULL and
the empty string, index-key rotation, lookups through the B-tree index."""

from __future__ import annotations

import ast
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, undefer

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import (
    EMAIL,
    PHONE,
    BlindIndex,
    EncryptedString,
    FromRow,
    collapse_whitespace,
    lookup,
    nfc,
)
from greenlang_crypto.sqlalchemy.migrate import ColumnJob, ColumnSpec

pytestmark = pytest.mark.integration

PKG = Path(__file__).resolve().parents[3] / "python" / "greenlang_crypto" / "sqlalchemy"


def _users(svc: Any, name: str, md: MetaData, length: int = 16) -> Table:
    return Table(
        name,
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("email", EncryptedString(svc, data_class="pii", tenant_id="acme")),
        Column("email_bidx", BlindIndex("email", normalizer=EMAIL, length=length), index=True),
        Column("phone", EncryptedString(svc, data_class="pii", tenant_id="acme")),
        Column("phone_bidx", BlindIndex("phone", normalizer=PHONE), index=True),
        Column("name", EncryptedString(svc, data_class="pii", tenant_id="acme")),
        Column("name_bidx", BlindIndex("name", normalizer=(collapse_whitespace, nfc))),
    )


@pytest.fixture
def users(engine: Engine, service: EncryptionService, table_name: str) -> Any:
    md = MetaData()
    t = _users(service, table_name, md)
    md.create_all(engine)
    yield t
    md.drop_all(engine)


def _ids(engine: Engine, stmt: Any) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(stmt).scalars())


def test_normalization_per_column(engine: Engine, users: Table) -> None:
    nfd = unicodedata.normalize("NFD", "José  Müller")
    with engine.begin() as conn:
        for row in (
            {"id": 1, "email": " Alice@Example.COM ", "email_bidx": " Alice@Example.COM "},
            {"id": 2, "phone": "+1 (555) 010-0200", "phone_bidx": "+1 (555) 010-0200"},
            {"id": 3, "name": nfd, "name_bidx": nfd},
        ):
            conn.execute(insert(users).values(**row))
        # The ciphertext keeps the original bytes; only the index is normalized.
        assert conn.execute(select(users.c.email).where(users.c.id == 1)).scalar() == (
            " Alice@Example.COM "
        )
    assert _ids(engine, select(users.c.id).where(users.c.email == "alice@example.com")) == [1]
    assert _ids(engine, select(users.c.id).where(users.c.phone == "+15550100200")) == [2]
    nfc_name = unicodedata.normalize("NFC", "José Müller")
    assert nfc_name != nfd
    assert _ids(engine, select(users.c.id).where(users.c.name == nfc_name)) == [3]
    assert _ids(engine, select(users.c.id).where(users.c.name == "jose muller")) == []


def test_equal_plaintexts_in_two_columns_get_different_indexes(
    engine: Engine, users: Table
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(users),
            [
                {
                    "id": 1,
                    "email": "5550100",
                    "email_bidx": "5550100",
                    "phone": "5550100",
                    "phone_bidx": "5550100",
                }
            ],
        )
        a, b = conn.execute(select(users.c.email_bidx, users.c.phone_bidx)).one()
    assert a[1:] != b[1:]


def test_truncated_index_returns_superset_and_lookup_filters(
    engine: Engine, service: EncryptionService, unique: Any
) -> None:
    class Base(DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = unique("people")
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        email: Mapped[str | None] = mapped_column(
            EncryptedString(service, data_class="pii", tenant_id="acme")
        )
        # One byte of MAC: 1/256 collisions, so 600 rows surely collide (k-anonymity style).
        email_bidx: Mapped[bytes | None] = mapped_column(
            BlindIndex("email", normalizer=EMAIL, length=1), index=True
        )

    Base.metadata.create_all(engine)
    try:
        with Session(engine) as s:
            s.add_all(Person(id=i, email=f"user{i}@example.com") for i in range(600))
            s.commit()
            index = Person.__table__.c.email_bidx.type
            groups: dict[bytes, list[int]] = {}
            for i in range(600):
                groups.setdefault(index.compute(f"user{i}@example.com"), []).append(i)
            # 600 values in 256 buckets: pigeonhole guarantees a collision.
            ids = next(g for g in groups.values() if len(g) > 1)
            target = f"USER{ids[0]}@example.com"
            raw = s.scalars(select(Person).where(Person.email == target)).all()
            assert sorted(p.id for p in raw) == ids  # superset from the truncated index
            found = lookup(s, Person.email, target)
            assert [p.id for p in found] == [ids[0]]
            assert lookup(s, Person.email, "nobody@example.com") == []
    finally:
        Base.metadata.drop_all(engine)


def _operand_name(node: ast.expr) -> str:
    # An operand that *is* a value (not a call computing something from one): x, a.b, x[1:].
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def test_no_equality_operator_on_macs() -> None:
    """A lint: the blind-index code compares MACs only with hmac.compare_digest."""
    suspicious = ("mac", "digest", "tag", "index", "stored")
    for path in PKG.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
            ):
                names = [_operand_name(o) for o in (node.left, *node.comparators)]
                hits = [n for n in names if any(s in n.lower() for s in suspicious)]
                assert not hits, f"{path.name}:{node.lineno} compares {hits} with =="
    assert "compare_digest" in (PKG / "blind_index.py").read_text()


def test_null_not_indexed_empty_has_an_index(engine: Engine, users: Table) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(users),
            [
                {"id": 1, "email": None, "email_bidx": None},
                {"id": 2, "email": "", "email_bidx": ""},
            ],
        )
        rows = dict(conn.execute(select(users.c.id, users.c.email_bidx)).all())
    assert rows[1] is None
    assert rows[2] is not None and len(rows[2]) == 17
    assert _ids(engine, select(users.c.id).where(users.c.email == "")) == [2]
    assert _ids(engine, select(users.c.id).where(users.c.email == None)) == [1]  # noqa: E711


def test_per_tenant_index_keys(engine: Engine, service: EncryptionService, unique: Any) -> None:
    class Base(DeclarativeBase):
        pass

    class Member(Base):
        __tablename__ = unique("members")
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tenant: Mapped[str] = mapped_column(String(20))
        email: Mapped[str | None] = mapped_column(
            EncryptedString(service, data_class="pii", tenant_id=FromRow("tenant"))
        )
        email_bidx: Mapped[bytes | None] = mapped_column(
            BlindIndex("email", normalizer=EMAIL, per_tenant=True), index=True
        )

    Base.metadata.create_all(engine)
    try:
        with Session(engine) as s:
            s.add_all(
                [Member(id=1, tenant="a", email="x@y.z"), Member(id=2, tenant="b", email="x@y.z")]
            )
            s.commit()
            loaded = s.scalars(
                select(Member).options(undefer(Member.email_bidx)).order_by(Member.id)
            )
            a, b = (m.email_bidx for m in loaded)
            assert a is not None and b is not None and a != b
            assert [m.id for m in lookup(s, Member.email, "X@Y.Z", tenant_id="b")] == [2]
            # == has no tenant to pick the key with: the error names the public form.
            with pytest.raises(InvalidArgumentError, match=r"email\.matches\(value, tenant_id"):
                s.scalars(select(Member).where(Member.email == "x@y.z")).all()
            matched = select(Member.id).where(Member.email.matches("X@y.z", tenant_id="a"))
            assert s.scalars(matched).all() == [1]
    finally:
        Base.metadata.drop_all(engine)


def test_index_key_rotation_window_and_backfill(
    pg_engine: Engine, service: EncryptionService, table_name: str
) -> None:
    md = MetaData()
    users = _users(service, table_name, md)
    md.create_all(pg_engine)
    try:
        with pg_engine.begin() as conn:
            conn.execute(
                insert(users),
                [{"id": i, "email": f"u{i}@x.org", "email_bidx": f"u{i}@x.org"} for i in range(50)],
            )
        old = service.active_index_versions()[0]
        new = service.rotate_index_key()
        users.c.email_bidx.type.refresh()
        with pg_engine.begin() as conn:
            conn.execute(
                insert(users), [{"id": 100, "email": "new@x.org", "email_bidx": "new@x.org"}]
            )
        # During the window both versions match.
        assert _ids(pg_engine, select(users.c.id).where(users.c.email == "U7@x.org")) == [7]
        assert _ids(pg_engine, select(users.c.id).where(users.c.email == "new@x.org")) == [100]
        job = ColumnJob(
            pg_engine,
            service,
            ColumnSpec.from_model(users.c.email),
            mode="reencrypt",
            batch_size=16,
        )
        before = job.dry_run()
        assert before.by_index_version == {old: 50, new: 1}
        job.run()
        after = job.dry_run()
        assert after.by_index_version == {new: 51}
        service.retire_index_key(old)
        users.c.email_bidx.type.refresh()
        assert _ids(pg_engine, select(users.c.id).where(users.c.email == "u7@x.org")) == [7]
        with pg_engine.connect() as conn:
            assert (
                conn.execute(
                    text(f"SELECT count(*) FROM {table_name} WHERE get_byte(email_bidx, 0) = :v"),
                    {"v": old},
                ).scalar()
                == 0
            )
    finally:
        md.drop_all(pg_engine)


def test_lookup_uses_the_btree_index(
    pg_engine: Engine, service: EncryptionService, table_name: str
) -> None:
    md = MetaData()
    users = _users(service, table_name, md)
    md.create_all(pg_engine)
    try:
        with pg_engine.begin() as conn:
            conn.execute(
                insert(users),
                [
                    {"id": i, "email": f"u{i}@x.org", "email_bidx": f"u{i}@x.org"}
                    for i in range(3000)
                ],
            )
            conn.execute(text(f"ANALYZE {table_name}"))
            stmt = select(users.c.id).where(users.c.email == "u5@x.org")
            compiled = stmt.compile(pg_engine)
            plan = "\n".join(
                r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params)
            )
        assert "Index" in plan and "Seq Scan" not in plan, plan
    finally:
        md.drop_all(pg_engine)


def _plan(conn: Any, stmt: Any, engine: Engine) -> str:
    compiled = stmt.compile(engine)
    rows = conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params)
    return "\n".join(r[0] for r in rows)


def test_matches_is_a_per_tenant_predicate_served_by_the_index(
    pg_engine: Engine, service: EncryptionService, table_name: str
) -> None:
    class Base(DeclarativeBase):
        pass

    class Member(Base):
        __tablename__ = f"{table_name}_members"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tenant: Mapped[str] = mapped_column(String(20))
        email: Mapped[str | None] = mapped_column(
            EncryptedString(service, data_class="pii", tenant_id=FromRow("tenant"))
        )
        email_bidx: Mapped[bytes | None] = mapped_column(
            BlindIndex("email", normalizer=EMAIL, per_tenant=True), index=True
        )

    class Order(Base):
        __tablename__ = f"{table_name}_orders"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        member_id: Mapped[int] = mapped_column(Integer)

    Base.metadata.create_all(pg_engine)
    try:
        with Session(pg_engine) as s:
            s.add_all(
                Member(id=i, tenant=f"t{i % 3}", email=f"u{i // 3}@x.org") for i in range(3000)
            )
            s.add_all(Order(id=i, member_id=i % 3000) for i in range(0, 6000, 7))
            s.commit()
        with pg_engine.connect() as conn:
            conn.execute(text(f"ANALYZE {Member.__tablename__}"))
            conn.execute(text(f"ANALYZE {Order.__tablename__}"))
            conn.commit()
        # u5@x.org exists in all three tenants (ids 15, 16, 17); t1's key finds id 16 only.
        where = Member.email.matches(" U5@X.org", tenant_id="t1")
        join = (
            select(Order.id).join(Member, (Order.member_id == Member.id) & where).order_by(Order.id)
        )
        sub = select(Order.id).where(
            Order.member_id.in_(select(Member.id).where(where).scalar_subquery())
        )
        with Session(pg_engine) as s:
            assert s.scalars(select(Member.id).where(where)).all() == [16]
            expected = [i for i in range(0, 6000, 7) if i % 3000 == 16]
            assert s.scalars(join).all() == expected
            assert sorted(s.scalars(sub).all()) == expected
            # A tenant that has no such row, and NULL, are ordinary predicates too.
            assert (
                s.scalars(
                    select(Member.id).where(Member.email.matches("u5@x.org", tenant_id="t9"))
                ).all()
                == []
            )
            assert s.scalars(select(Member.id).where(Member.email.matches(None))).all() == []
            with pytest.raises(InvalidArgumentError, match=r"matches\(value, tenant_id=\.\.\.\)"):
                _ = Member.email == "u5@x.org"
        with pg_engine.connect() as conn:
            conn.execute(text("SET enable_seqscan = off"))
            for stmt in (select(Member.id).where(where), join, sub):
                plan = _plan(conn, stmt, pg_engine)
                assert f"ix_{Member.__tablename__}_email_bidx" in plan, plan
    finally:
        Base.metadata.drop_all(pg_engine)
