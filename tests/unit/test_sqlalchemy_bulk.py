"""The bulk paths of the SQLAlchemy layer (flush batching, blind-index columns left out of ORM
loads, the ASCII fast path of the normalizers), on SQLite with the embedded local provider.

Each fast path is checked against the slow one it replaces: the same bytes must come out.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import (
    EMAIL,
    PHONE,
    BlindIndex,
    EncryptedString,
    IndexValue,
    casefold,
    collapse_whitespace,
    digits,
    lookup,
    nfc,
    nfkc,
    strip,
)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EncryptionService]:
    d = tmp_path / "keys"
    d.mkdir()
    LocalKeyProvider(d).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=d))
    yield svc
    svc.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    yield eng
    eng.dispose()


def _models(svc: EncryptionService, *, orm_deferred: bool = True) -> tuple[Any, Any]:
    class Base(DeclarativeBase):
        pass

    suffix = uuid.uuid4().hex[:8]

    class User(Base):
        __tablename__ = f"users_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tenant: Mapped[str] = mapped_column(String(40))
        email: Mapped[str | None] = mapped_column(
            EncryptedString(svc, data_class="pii", tenant_id="t1")
        )
        email_bidx: Mapped[bytes | None] = mapped_column(
            BlindIndex("email", normalizer=EMAIL, orm_deferred=orm_deferred), index=True
        )

    return Base, User


# -- normalizers ---------------------------------------------------------------------------


VALUES = [
    " Alice@Example.COM ",
    "bob@example.com",
    "\tTabs\x0bAnd\x1fSeps\x0c ",
    "",
    "   ",
    "ALL-CAPS@EXAMPLE.ORG",
    "+1 (555) 010-0200",
    "a  b   c",
]
NON_ASCII = ["José@Example.com", unicodedata.normalize("NFD", "Müller"), "Straße", "\u00a0x\u00a0"]

CHAINS: list[Any] = [
    EMAIL,
    PHONE,
    (collapse_whitespace, nfc),
    (strip, nfkc, casefold),
    (casefold,),
    (digits, strip),
    None,
]


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("values", [VALUES, VALUES + NON_ASCII, NON_ASCII])
def test_normalize_many_equals_normalize_one_by_one(chain: Any, values: list[str]) -> None:
    index = BlindIndex("email", normalizer=chain)
    assert index.normalize_many(values) == [index.normalize(v) for v in values]


def test_normalize_many_falls_back_for_custom_normalizers_and_bytes() -> None:
    calls: list[str] = []

    def custom(value: str) -> str:
        calls.append(value)
        return value.upper()

    index = BlindIndex("email", normalizer=(strip, custom))
    assert index.normalize_many([" a ", "b"]) == [b"A", b"B"]
    assert calls == ["a", "b"]
    mixed = BlindIndex("email", normalizer=EMAIL)
    assert mixed.normalize_many([b"  Raw Bytes ", " Str "]) == [b"  Raw Bytes ", b"str"]
    with pytest.raises(TypeError):
        mixed.normalize_many([" a ", 5])  # type: ignore[list-item]


# -- flush and load ----------------------------------------------------------------------


def test_flush_indexes_and_loads_leave_the_index_out(
    engine: Engine, service: EncryptionService
) -> None:
    Base, User = _models(service)
    Base.metadata.create_all(engine)
    emails = [f"User{i}@Example.com" for i in range(50)] + [None, "Jos\u00e9@example.com"]
    with Session(engine) as s:
        s.add_all(User(id=i, tenant="t1", email=e) for i, e in enumerate(emails))
        s.commit()
    index = User.__table__.c.email_bidx.type
    with engine.connect() as conn:
        stored = dict(conn.execute(select(User.id, User.email_bidx)).all())
    for i, e in enumerate(emails):
        expected = None if e is None else bytes(index.compute(e))
        assert stored[i] == expected
    with Session(engine) as s:
        users = s.scalars(select(User).order_by(User.id)).all()
        assert [u.email for u in users] == emails
        # The index column is not loaded with the entity ...
        assert all("email_bidx" not in u.__dict__ for u in users)
        assert "email_bidx" in inspect(users[0]).unloaded
        # ... reading it raises rather than running a query behind the attribute (which
        # an asyncio session could not run); it loads when asked for, and lookups compare it
        # in SQL.
        with pytest.raises(InvalidRequestError, match="raiseload"):
            _ = users[3].email_bidx
        s.refresh(users[3], ["email_bidx"])
        assert users[3].email_bidx == stored[3]
        assert [u.id for u in lookup(s, User.email, "user7@example.com")] == [7]
        assert s.scalars(select(User.id).where(User.email == "JOSÉ@EXAMPLE.COM")).all() == [51]


def test_orm_deferred_false_loads_the_index(engine: Engine, service: EncryptionService) -> None:
    Base, User = _models(service, orm_deferred=False)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(User(id=1, tenant="t1", email="a@example.com"))
        s.commit()
    with Session(engine) as s:
        user = s.get(User, 1)
        assert user is not None and "email_bidx" in user.__dict__
        assert isinstance(user.email_bidx, bytes) and len(user.email_bidx) == 17


def test_update_of_an_unloaded_index_recomputes_it(
    engine: Engine, service: EncryptionService
) -> None:
    Base, User = _models(service)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([User(id=1, tenant="t1", email="old@example.com"), User(id=2, tenant="t1")])
        s.commit()
    with Session(engine) as s:
        one, two = s.get(User, 1), s.get(User, 2)
        assert one is not None and two is not None
        one.email = "New@Example.com"
        two.email = "second@example.com"
        s.commit()
    with Session(engine) as s:
        assert s.scalars(select(User.id).where(User.email == "new@example.com")).all() == [1]
        assert s.scalars(select(User.id).where(User.email == "old@example.com")).all() == []
        assert s.scalars(select(User.id).where(User.email == "second@example.com")).all() == [2]
        one = s.get(User, 1)
        assert one is not None
        one.email = None
        s.commit()
    with engine.connect() as conn:
        assert (
            conn.execute(text(f"SELECT email_bidx FROM {User.__tablename__} WHERE id = 1")).scalar()
            is None
        )


def test_object_added_by_a_later_before_flush_listener_is_indexed(
    engine: Engine, service: EncryptionService
) -> None:
    # Listeners registered after the library's run after its session hook: the object they
    # add is prepared by the per-object hook instead.
    Base, User = _models(service)
    Base.metadata.create_all(engine)

    def add_audit_user(session: Session, flush_context: Any, instances: Any) -> None:
        if not session.info.get("added"):
            session.info["added"] = True
            session.add(User(id=99, tenant="t1", email="Late@Example.com"))

    with Session(engine) as s:
        event.listen(s, "before_flush", add_audit_user)
        s.add(User(id=1, tenant="t1", email="first@example.com"))
        s.commit()
    with Session(engine) as s:
        assert s.scalars(select(User.id).where(User.email == "late@example.com")).all() == [99]
        assert s.scalars(select(User.id).where(User.email == "first@example.com")).all() == [1]


def test_failed_flush_then_retry_indexes_current_values(
    engine: Engine, service: EncryptionService
) -> None:
    Base, User = _models(service)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(User(id=1, tenant="t1", email="taken@example.com"))
        s.commit()
    from greenlang_crypto.sqlalchemy import orm

    with Session(engine) as s:
        dup = User(id=1, tenant="t1", email="dup@example.com")
        s.add(dup)
        with pytest.raises(IntegrityError):
            s.commit()
        # Nothing stays marked as prepared after the failed flush.
        assert inspect(dup) not in orm._prepared
        s.rollback()
        s.add(User(id=2, tenant="t1", email="Retry@Example.com"))
        s.commit()
    with Session(engine) as s:
        assert s.scalars(select(User.id).where(User.email == "retry@example.com")).all() == [2]


def test_index_bind_processor_passes_index_values_and_macs_plaintexts(
    engine: Engine, service: EncryptionService
) -> None:
    Base, User = _models(service)
    Base.metadata.create_all(engine)
    index = User.__table__.c.email_bidx.type
    process = index.dialect_impl(engine.dialect).bind_processor(engine.dialect)
    computed = index.compute("a@example.com")
    assert process(None) is None
    assert process(computed) is computed
    # A plaintext bound through Core is normalized and MACed on the way.
    assert process(" A@Example.com") == computed
    assert process(b"a@example.com") == index.compute(b"a@example.com")
    with engine.begin() as conn:
        conn.execute(
            User.__table__.insert(),
            [
                {
                    "id": 5,
                    "tenant": "t1",
                    "email": "core@example.com",
                    "email_bidx": "Core@example.com",
                }
            ],
        )
    with Session(engine) as s:
        assert s.scalars(select(User.id).where(User.email == "core@example.com")).all() == [5]
    assert isinstance(computed, IndexValue)


def test_equality_predicate_compiles_like_a_comparison_and_negates(
    engine: Engine, service: EncryptionService
) -> None:
    Base, User = _models(service)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(User(id=i, tenant="t1", email=f"u{i}@example.com") for i in range(3))
        s.commit()
    predicate = User.email == "U1@example.com"
    sql = str(predicate.compile(engine))
    assert sql.endswith("email_bidx = ?"), sql
    assert str((~predicate).compile(engine)).endswith("email_bidx != ?")
    with Session(engine) as s:
        assert s.scalars(select(User.id).where(predicate)).all() == [1]
        assert sorted(s.scalars(select(User.id).where(~predicate)).all()) == [0, 2]
        # Through the index attribute itself, as lookup() builds it.
        index = User.__table__.c.email_bidx.type
        assert s.scalars(
            select(User.id).where(index.where(User.email_bidx, "u2@example.com"))
        ).all() == [2]


def test_object_changed_by_a_later_before_flush_listener_is_reindexed(
    engine: Engine, service: EncryptionService
) -> None:
    Base, User = _models(service)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([User(id=1, tenant="t1", email="one@example.com"), User(id=2, tenant="t1")])
        s.commit()

    def rename(session: Session, flush_context: Any, instances: Any) -> None:
        other = session.get(User, 2)
        if other is not None and other.email is None:
            other.email = "Two@Example.com"

    with Session(engine) as s:
        event.listen(s, "before_flush", rename)
        one = s.get(User, 1)
        assert one is not None
        one.tenant = "t1b"  # something to flush, so the listeners run
        s.commit()
    with Session(engine) as s:
        assert s.scalars(select(User.id).where(User.email == "two@example.com")).all() == [2]
