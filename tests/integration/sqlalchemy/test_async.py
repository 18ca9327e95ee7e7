"""The SQLAlchemy layer under asyncio, on psycopg's asyncio driver and on asyncpg, against the
real PostgreSQL: ORM round trips, alookup, binary-result engine options, the deferred index
column, and KMS calls of a flush made off the event loop (the real KMS server over HTTP, slowed
at the client's own hook), including a flush cancelled while it waits on the KMS."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, undefer

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import (
    EMAIL,
    BlindIndex,
    EncryptedJSON,
    EncryptedString,
    FromRow,
    SealedColumnError,
    alookup,
    async_engine_options,
    lookup,
)
from tests.integration.conftest import CREDENTIALS, kms_client

pytestmark = pytest.mark.integration

DRIVERS = ["psycopg", "asyncpg"]


def _async_url(pg_url: str, driver: str) -> str:
    return pg_url.replace("postgresql+psycopg://", f"postgresql+{driver}://", 1)


def _models(svc: Any, suffix: str) -> tuple[type[DeclarativeBase], Any]:
    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = f"async_users_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
        tenant_id: Mapped[str] = mapped_column(String(40))
        email: Mapped[str | None] = mapped_column(
            EncryptedString(svc, data_class="pii", tenant_id=FromRow("tenant_id"))
        )
        email_bidx: Mapped[bytes | None] = mapped_column(
            BlindIndex("email", normalizer=EMAIL, per_tenant=True), index=True
        )
        prefs: Mapped[Any] = mapped_column(
            EncryptedJSON(svc, data_class="pii", tenant_id="fixed"), nullable=True
        )

    return Base, User


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_orm_round_trip_lookup_and_index_column(
    pg_url: str, service: EncryptionService, driver: str, unique: Any
) -> None:
    Base, User = _models(service, unique("rt"))
    url = _async_url(pg_url, driver)

    async def main() -> None:
        engine = create_async_engine(url, **async_engine_options(url))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with AsyncSession(engine, expire_on_commit=False) as s:
                users = [
                    User(tenant_id=f"t{i % 2}", email=f"User{i}@Example.com", prefs={"n": i})
                    for i in range(20)
                ]
                s.add_all(users)
                await s.commit()
                first = users[0]
                # The plaintext is back in the object after the flush; the index was written.
                assert first.email == "User0@Example.com"
            async with AsyncSession(engine) as s:
                got = await s.get(User, first.id)
                assert got is not None and got.email == "User0@Example.com"
                assert got.prefs == {"n": 0}
                # The deferred index column never runs a query when read (raiseload), so no
                # MissingGreenlet: a clear InvalidRequestError instead ...
                with pytest.raises(InvalidRequestError, match="raiseload"):
                    _ = got.email_bidx
                # ... and it loads when asked for.
                await s.refresh(got, ["email_bidx"])
                index = User.__table__.c.email_bidx.type
                assert got.email_bidx == index.compute("user0@example.com", tenant_id="t0")
                undeferred = (
                    await s.scalars(
                        select(User).options(undefer(User.email_bidx)).where(User.id == first.id)
                    )
                ).one()
                assert undeferred.email_bidx == got.email_bidx
                got.email = "changed@example.com"
                await s.commit()
                await s.refresh(got)
                assert got.email == "changed@example.com"
            async with AsyncSession(engine) as s:
                found = await alookup(s, User.email, " user3@example.COM", tenant_id="t1")
                assert [u.email for u in found] == ["User3@Example.com"]
                # Another tenant's key gives another index: no match.
                assert await alookup(s, User.email, "user3@example.com", tenant_id="t0") == []
                with pytest.raises(InvalidArgumentError, match="alookup"):
                    lookup(s, User.email, "user3@example.com", tenant_id="t1")  # type: ignore[arg-type]
                stmt = select(User.id, User.tenant_id, User.email).where(
                    User.email.matches("changed@example.com", tenant_id="t0")
                )
                assert (await s.execute(stmt)).all() == [(first.id, "t0", "changed@example.com")]
                with pytest.raises(SealedColumnError) as err:
                    await s.execute(select(User.id, User.email))
                assert err.value.columns == (f"{User.__tablename__}.tenant_id",)
        finally:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
            await engine.dispose()

    _run(main())


def test_async_engine_options() -> None:
    psycopg_opts = async_engine_options("postgresql+psycopg://u@h/db")
    assert psycopg_opts["hide_parameters"] is True
    cursor = psycopg_opts["connect_args"]["cursor_factory"]
    import psycopg

    assert issubclass(cursor, psycopg.AsyncCursor)
    assert async_engine_options("asyncpg") == {"hide_parameters": True}
    with pytest.raises(InvalidArgumentError, match="pg8000"):
        async_engine_options("postgresql+pg8000://u@h/db")


# -- KMS calls of an asyncio flush ---------------------------------------------------------


@pytest.fixture
def kms_service(tmp_path: Path, kms_endpoint: str) -> Iterator[tuple[EncryptionService, Any]]:
    """A service over the KMS server (a key of its own; the shared server is not reset)."""
    from greenlang_crypto.providers.aws_kms import AwsKmsKeyProvider

    arn = kms_client(kms_endpoint).create_key(Description="glc async test")["KeyMetadata"]["Arn"]
    provider = AwsKmsKeyProvider(keys=[arn], endpoint_url=kms_endpoint, **CREDENTIALS)
    cfg = EncryptionServiceConfig(
        provider="aws-kms",
        kms_key_ids=(arn,),
        key_store_url=f"sqlite:///{tmp_path / 'ks.db'}",
        data_dir=tmp_path,
    )
    svc = EncryptionService(cfg, provider=provider)
    yield svc, provider
    svc.close()


def test_a_cache_miss_in_an_async_flush_leaves_the_event_loop_running(
    pg_url: str, kms_service: tuple[EncryptionService, Any], driver: str, unique: Any
) -> None:
    svc, provider = kms_service
    Base, User = _models(svc, unique("kms"))
    url = _async_url(pg_url, driver)
    calls: list[tuple[str, bool]] = []
    delay = 0.4

    def slow_kms(request: Any, **_: Any) -> None:
        # A slow KMS region, made at the real client's hook: which thread sends each call,
        # and a delay long enough to see a stalled event loop.
        target = request.headers.get("X-Amz-Target", b"").decode()
        calls.append((target, threading.current_thread() is threading.main_thread()))
        time.sleep(delay)

    for client in provider.clients.values():
        client.meta.events.register("before-send.kms", slow_kms)

    async def ticker(stop: asyncio.Event, gaps: list[float]) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def main() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            gaps: list[float] = []
            stop = asyncio.Event()
            tick = asyncio.create_task(ticker(stop, gaps))
            started = time.monotonic()
            async with AsyncSession(engine, expire_on_commit=False) as s:
                s.add_all(
                    [
                        User(tenant_id="t1", email="a@x.org", prefs={"a": 1}),
                        User(tenant_id="t2", email="b@x.org"),
                    ]
                )
                await s.commit()
            async with AsyncSession(engine) as s:
                # A cold decrypt cache: a fresh service would miss; here drop the DEKs.
                svc.disable_cached_keys()
                rows = (await s.scalars(select(User).order_by(User.tenant_id))).all()
                assert [u.email for u in rows] == ["a@x.org", "b@x.org"]
            async with engine.connect() as conn:
                # Core, streamed: its rows are converted inside SQLAlchemy's greenlet too.
                svc.disable_cached_keys()
                before = len(calls)
                stream = await conn.stream(select(User.__table__.c.prefs))
                assert {r.prefs and r.prefs["a"] for r in await stream.all()} == {1, None}
                assert len(calls) == before + 1
            elapsed = time.monotonic() - started
            stop.set()
            await tick
            assert calls, "the flush made no KMS call"
            # Every KMS call ran off the event loop's thread, and the loop kept ticking
            # through them.
            assert all(not on_main for _, on_main in calls), calls
            assert elapsed >= delay * len(calls) * 0.9
            assert max(gaps) < delay / 2, max(gaps)
        finally:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
            await engine.dispose()

    _run(main())


def test_sync_sessions_are_unchanged(pg_url: str, service: EncryptionService, unique: Any) -> None:
    from sqlalchemy import create_engine

    Base, User = _models(service, unique("sync"))
    engine = create_engine(pg_url)
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as s:
            s.add(User(tenant_id="t1", email="a@x.org"))
            s.commit()
        with Session(engine) as s:
            assert [u.email for u in lookup(s, User.email, "A@x.org", tenant_id="t1")] == [
                "a@x.org"
            ]
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_a_cancelled_flush_waiting_on_the_kms_stores_nothing(
    pg_url: str, kms_service: tuple[EncryptionService, Any], unique: Any
) -> None:
    svc, provider = kms_service
    Base, User = _models(svc, unique("cancel"))
    url = _async_url(pg_url, "asyncpg")
    delay = [1.0]

    def slow_kms(request: Any, **_: Any) -> None:
        time.sleep(delay[0])

    for client in provider.clients.values():
        client.meta.events.register("before-send.kms", slow_kms)

    async def main() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with AsyncSession(engine) as s:
                s.add(User(tenant_id="t1", email="a@x.org"))
                # A request timeout fires while the flush waits on the KMS (on its thread):
                # the flush is cancelled like any awaited I/O, and its transaction rolled back.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(s.commit(), 0.2)
            async with AsyncSession(engine) as s:
                assert (await s.scalars(select(User))).all() == []
            delay[0] = 0.0
            async with AsyncSession(engine) as s:
                s.add(User(tenant_id="t1", email="b@x.org"))
                await s.commit()
            async with AsyncSession(engine) as s:
                assert [u.email for u in (await s.scalars(select(User))).all()] == ["b@x.org"]
        finally:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
            await engine.dispose()

    _run(main())
