"""The ORM hooks without a database: which mappers get them and what a write does to an object.

A flush is played by calling the hooks on transient objects, as SQLAlchemy would around the
INSERT; the embedded local service encrypts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, configure_mappers, mapped_column

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import orm
from greenlang_crypto.sqlalchemy._common import FromRow
from greenlang_crypto.sqlalchemy.blind_index import EMAIL, BlindIndex
from greenlang_crypto.sqlalchemy.types import EncryptedString, SealedValue


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EncryptionService]:
    d = tmp_path / "keys"
    d.mkdir()
    LocalKeyProvider(d).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=d))
    yield svc
    svc.close()


def _models(svc: Any) -> dict[str, Any]:
    class Base(DeclarativeBase):
        pass

    suffix = uuid.uuid4().hex[:8]

    class User(Base):
        __tablename__ = f"orm_users_{suffix}"
        id: Mapped[str] = mapped_column(primary_key=True, default=lambda: "generated")
        tenant: Mapped[str | None] = mapped_column(String(40))
        email: Mapped[str | None] = mapped_column(
            EncryptedString(svc, data_class="pii", tenant_id=FromRow("tenant"))
        )
        email_bidx: Mapped[bytes | None] = mapped_column(BlindIndex("email", normalizer=EMAIL))
        phone: Mapped[str | None] = mapped_column(
            EncryptedString(svc, data_class="pii", tenant_id="t1")
        )
        phone_bidx: Mapped[bytes | None] = mapped_column(BlindIndex("phone", orm_deferred=False))

    class Counter(Base):
        __tablename__ = f"orm_counters_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        note: Mapped[str | None] = mapped_column(
            EncryptedString(svc, data_class="pii", tenant_id="t1", bind_row=True)
        )

    class Plain(Base):
        __tablename__ = f"orm_plain_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)

    configure_mappers()
    return {"User": User, "Counter": Counter, "Plain": Plain}


def test_only_mappers_with_encrypted_or_index_columns_get_hooks() -> None:
    models = _models(lambda: None)
    binder = orm._binder_of(models["User"])
    assert binder is not None
    assert [key for key, _ in binder.sealed] == ["email"]
    assert [(i, s) for i, _, s, _ in binder.indexes] == [
        ("email_bidx", "email"),
        ("phone_bidx", "phone"),
    ]
    assert binder.pk_keys == ["id"]
    assert orm._binder_of(models["Plain"]) is None
    assert orm._binder_of(int) is None
    # install() is idempotent: the same binder stays.
    orm.install(inspect(models["User"]))
    assert orm._binder_of(models["User"]) is binder


def test_index_columns_are_deferred_unless_declared_otherwise() -> None:
    mapper = inspect(_models(lambda: None)["User"])
    assert mapper.attrs.email_bidx.deferred
    # raiseload: reading the unloaded attribute never runs a query (MissingGreenlet under
    # asyncio); undefer() or refresh() loads it.
    assert mapper.attrs.email_bidx.raiseload
    assert not mapper.attrs.phone_bidx.deferred
    assert not mapper.attrs.email.deferred


def test_an_insert_seals_row_bound_values_and_fills_indexes(service: EncryptionService) -> None:
    User = _models(service)["User"]
    binder = orm._binder_of(User)
    assert binder is not None
    user = User(tenant="acme", email=" A@Example.com", phone="+1 555")
    binder.before_write(user, insert=True)
    # The Python-side default of the key was taken early: the value is bound to it.
    assert user.id == "generated"
    assert isinstance(user.email, SealedValue)
    email_type = User.__table__.c.email.type
    assert email_type.decrypt_value(user.email, "generated", "acme") == " A@Example.com"
    index = User.__table__.c.email_bidx.type
    assert user.email_bidx == index.compute("a@example.com")
    assert user.phone_bidx == User.__table__.c.phone_bidx.type.compute("+1 555")
    # Table-bound columns are left to the column type.
    assert user.phone == "+1 555"
    binder.after_write(user)
    assert user.email == " A@Example.com"
    assert not inspect(user).attrs.email.history.has_changes()


def test_none_is_not_sealed_and_clears_the_index(service: EncryptionService) -> None:
    User = _models(service)["User"]
    binder = orm._binder_of(User)
    assert binder is not None
    user = User(id="u1", tenant="acme", email=None, email_bidx=b"stale")
    binder.before_write(user, insert=True)
    assert user.email is None and user.email_bidx is None


def test_row_binding_needs_a_key_and_a_tenant(service: EncryptionService) -> None:
    models = _models(service)
    counter_binder = orm._binder_of(models["Counter"])
    assert counter_binder is not None
    with pytest.raises(InvalidArgumentError, match="client-side primary key"):
        counter_binder.before_write(models["Counter"](note="x"), insert=True)
    user_binder = orm._binder_of(models["User"])
    assert user_binder is not None
    with pytest.raises(InvalidArgumentError, match="'tenant' is None"):
        user_binder.before_write(models["User"](id="u1", email="x"), insert=True)


def test_row_tenant_columns_are_named_for_column_selects() -> None:
    models = _models(lambda: None)
    # The attribute "tenant" maps the column "tenant"; column selects look for that column.
    assert models["User"].__table__.c.email.type.tenant_column == "tenant"


def test_column_selects_through_a_session(service: EncryptionService) -> None:
    from sqlalchemy import create_engine, select, text, update

    from greenlang_crypto.sqlalchemy.types import SealedColumnError

    models = _models(service)
    User, Counter = models["User"], models["Counter"]
    engine = create_engine("sqlite://")
    User.metadata.create_all(engine)
    try:
        with Session(engine) as s:
            s.add_all([User(id="u1", tenant="acme", email="a@x.org"), Counter(id=1, note="n")])
            s.commit()
        with Session(engine) as s:
            with pytest.raises(SealedColumnError) as err:
                s.execute(select(User.id, User.email))
            assert err.value.columns == (f"{User.__tablename__}.tenant",)
            assert s.execute(select(User.tenant, User.email, User.id)).all() == [
                ("acme", "a@x.org", "u1")
            ]
            assert s.execute(select(Counter.note, Counter.id)).all() == [("n", 1)]
            # Entity loads and selects of other columns are untouched.
            assert s.scalars(select(User.phone)).all() == [None]
            assert [c.note for c in s.scalars(select(Counter))] == ["n"]
            # RETURNING: the entity is decrypted by the load hook; a bare column is refused.
            changed = s.scalars(
                update(Counter).where(Counter.id == 1).values(id=1).returning(Counter)
            ).all()
            assert [c.note for c in changed] == ["n"]
            with pytest.raises(SealedColumnError, match="return the entity"):
                s.execute(update(Counter).values(id=1).returning(Counter.id, Counter.note))
        # A textual select typed with a row-bound column is refused by the Core check.
        with Session(engine) as s, pytest.raises(SealedColumnError):
            s.execute(
                text(f"SELECT id, note FROM {Counter.__tablename__}").columns(
                    Counter.id, Counter.note
                )
            )
    finally:
        engine.dispose()


def test_the_first_query_of_a_process_loads_row_bound_columns(tmp_path: Path) -> None:
    # SQLAlchemy configures mappers lazily, inside the first query that needs them: the
    # Session hook must already be in place then, or that query is refused as a Core select.
    # Only a fresh process has unconfigured mappers, so the check runs in one.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import uuid
        import sqlalchemy as sa
        from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
        from greenlang_crypto.service import EncryptionService
        from greenlang_crypto.sqlalchemy import EncryptedString, FromRow

        svc = EncryptionService.init_local({str(tmp_path / "keys")!r})

        class Base(DeclarativeBase):
            pass

        class User(Base):
            __tablename__ = "users"
            id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
            tenant_id: Mapped[str] = mapped_column(sa.String(64))
            email: Mapped[str] = mapped_column(
                EncryptedString(svc, data_class="pii", tenant_id=FromRow("tenant_id"))
            )

        engine = sa.create_engine({f"sqlite:///{tmp_path / 'db.sqlite'}"!r})
        uid = uuid.uuid4()
        with engine.begin() as conn:  # Core only: the mapper stays unconfigured
            Base.metadata.create_all(conn)
        with Session(engine) as s:  # the first ORM work of the process: a read
            assert s.get(User, uid) is None
            s.add(User(id=uid, tenant_id="t1", email="a@x.org"))
            s.commit()
        with Session(engine) as s:
            assert s.get(User, uid).email == "a@x.org"
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
