"""Erased tenants in queries: ``skip_erased=True`` reads a shredded value as None, the default
raises DataErasedError; the other tenants' rows still decrypt (the fast Rust path included).
Both erasures: a tenant's branch keys deleted, and a tenant erased with its stored DEKs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import DataErasedError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EncryptedBytes, EncryptedJSON, EncryptedString, FromRow

pytestmark = pytest.mark.integration

TENANTS = [f"t{i}" for i in range(8)]
ERASED = "t3"


#: How a tenant is erased: its branch keys deleted (values sealed under branch keys), or the
#: whole tenant erased (values sealed under stored DEKs), where the service has it.
MODES = ["branch", "stored"]


def _service(data_dir: Path, mode: str) -> EncryptionService:
    cfg = EncryptionServiceConfig(data_dir=data_dir, key_reference=mode, keyring_refresh_seconds=0)
    return EncryptionService(cfg)


def _erase(svc: EncryptionService, mode: str) -> None:
    if mode == "branch":
        assert svc.delete_branch_keys(f"tenant:{ERASED}") >= 1
    else:
        svc.erase_tenant(ERASED)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "stored" and not hasattr(EncryptionService, "erase_tenant"):
        pytest.fail("EncryptionService.erase_tenant is missing")
    return str(request.param)


@pytest.fixture
def branch_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    LocalKeyProvider(d).create_master_key()
    return d


@pytest.fixture
def holder(branch_dir: Path, mode: str) -> Iterator[list[EncryptionService]]:
    """The current service, swappable (a callable ``service=`` reads it)."""
    box = [_service(branch_dir, mode)]
    yield box
    for svc in box:
        svc.close()


def _models(svc: Any, suffix: str, *, skip: bool) -> tuple[type[DeclarativeBase], Any]:
    class Base(DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = f"erased_people_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
        tenant_id: Mapped[str] = mapped_column(String(20))
        name: Mapped[str | None] = mapped_column(
            EncryptedString(svc, data_class="pii", tenant_id=FromRow("tenant_id"), skip_erased=skip)
        )
        plain: Mapped[str] = mapped_column(String(20))

    return Base, Person


@pytest.mark.parametrize("fresh_service", [False, True], ids=["same-service", "fresh-service"])
def test_one_erased_tenant_among_many(
    engine: Engine,
    holder: list[EncryptionService],
    branch_dir: Path,
    unique: Any,
    fresh_service: bool,
    mode: str,
) -> None:
    suffix = unique("p")
    Base, Person = _models(lambda: holder[-1], suffix, skip=True)
    _, Strict = _models(lambda: holder[-1], suffix, skip=False)
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as s:
            s.add_all(
                Person(tenant_id=t, name=f"name-{t}-{i}", plain=f"{t}-{i}")
                for t in TENANTS
                for i in range(5)
            )
            s.commit()
        _erase(holder[-1], mode)
        if fresh_service:
            holder.append(_service(branch_dir, mode))
        with Session(engine) as s:
            people = s.scalars(select(Person).order_by(Person.plain)).all()
            assert len(people) == 5 * len(TENANTS)
            for p in people:
                if p.tenant_id == ERASED:
                    assert p.name is None
                else:
                    assert p.name == f"name-{p.plain}"
            # Column selects take the same path.
            rows = s.execute(select(Person.id, Person.tenant_id, Person.name)).all()
            assert sum(r.name is None for r in rows) == 5
        # Without skip_erased, the query fails with the typed error.
        with Session(engine) as s, pytest.raises(DataErasedError):
            s.scalars(select(Strict)).all()
        with Session(engine) as s:
            # Filtering the erased tenant out is the other way to read the rest.
            others = s.scalars(select(Strict).where(Strict.tenant_id != ERASED)).all()
            assert len(others) == 5 * (len(TENANTS) - 1)
    finally:
        Base.metadata.drop_all(engine)


@pytest.mark.parametrize("column_type", [EncryptedString, EncryptedBytes, EncryptedJSON])
def test_table_bound_columns_through_the_fast_path(
    engine: Engine,
    holder: list[EncryptionService],
    table_name: str,
    column_type: Any,
    mode: str,
) -> None:
    value: Any = {"a": 1} if column_type is EncryptedJSON else "v"
    if column_type is EncryptedBytes:
        value = b"v"

    def table(md: MetaData, skip: bool) -> Table:
        def typ(tenant: str) -> Any:
            return column_type(
                lambda: holder[-1], data_class="pii", tenant_id=tenant, skip_erased=skip
            )

        return Table(
            table_name,
            md,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("erased", typ(ERASED)),
            Column("kept", typ("t0")),
        )

    lenient = table(MetaData(), True)
    strict = table(MetaData(), False)
    lenient.create(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(lenient), [{"id": i, "erased": value, "kept": value} for i in range(50)]
            )
            # Read once so the fast path's cache holds both DEKs before the erasure.
            assert conn.execute(select(lenient.c.erased)).scalars().all() == [value] * 50
        _erase(holder[-1], mode)
        with engine.connect() as conn:
            rows = conn.execute(select(lenient.c.id, lenient.c.erased, lenient.c.kept)).all()
        assert [(r.erased, r.kept) for r in rows] == [(None, value)] * 50
        with engine.connect() as conn, pytest.raises(DataErasedError):
            conn.execute(select(strict.c.erased)).all()
        with engine.connect() as conn:
            assert conn.execute(select(strict.c.kept)).scalars().all() == [value] * 50
    finally:
        lenient.drop(engine)


def test_a_running_process_stops_matching_an_erased_tenant_at_once(
    engine: Engine, holder: list[EncryptionService], unique: Any, mode: str
) -> None:
    # One long-running process: the blind-index column caches its keys. After the erasure,
    # which gives the tenant a new index key, the old rows match nothing and a new row is
    # indexed (and found) under the new key, with no refresh() call and no wait.
    from greenlang_crypto.sqlalchemy import BlindIndex

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = f"erased_users_{unique('u')}"
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant_id: Mapped[str] = mapped_column(String(20))
        email: Mapped[str | None] = mapped_column(
            EncryptedString(
                lambda: holder[-1],
                data_class="pii",
                tenant_id=FromRow("tenant_id"),
                skip_erased=True,
            )
        )
        email_bidx: Mapped[bytes | None] = mapped_column(
            BlindIndex("email", per_tenant=True), index=True
        )

    Base.metadata.create_all(engine)
    try:
        with Session(engine) as s:
            s.add_all(
                [
                    User(id=1, tenant_id=ERASED, email="a@x.org"),
                    User(id=2, tenant_id="t0", email="a@x.org"),
                ]
            )
            s.commit()

        def ids(tenant: str) -> list[int]:
            with Session(engine) as s:
                stmt = select(User.id).where(User.email.matches("a@x.org", tenant_id=tenant))
                return sorted(s.scalars(stmt).all())

        assert ids(ERASED) == [1] and ids("t0") == [2]  # the keys are cached now
        if mode == "branch":
            holder[-1].erase_tenant(ERASED)  # the index keys go with the tenant
        else:
            _erase(holder[-1], mode)
        assert ids(ERASED) == [] and ids("t0") == [2]
        with Session(engine) as s:
            s.add(User(id=3, tenant_id=ERASED, email="a@x.org"))
            s.commit()
        assert ids(ERASED) == [3]
    finally:
        Base.metadata.drop_all(engine)
