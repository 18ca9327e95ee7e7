"""SQLAlchemy-layer gate checks under asyncio. Imported by benches/gate.py when GLC_PG_URL is set.

The users model of benches/gate_sqlalchemy.py (uuid id, tenant, encrypted and blind-indexed
e-mail) against the same model with a plain indexed e-mail, inserted and selected through the
ORM, 10,000 rows per call: once with a sync Session and once with an AsyncSession, all four
timed in the same interleaved rounds. The check is the async path's ratio (ours / plain) over
the sync path's ratio: what asyncio adds to the encrypted model's cost relative to the plain
one, beyond what it adds to both. Goal: within 1.05x. The asyncpg driver is reported beside
psycopg's asyncio driver.
"""

from __future__ import annotations

import asyncio
import atexit
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Mapped

from benches._measure import Ratio
from benches.gate_sqlalchemy import N_ROWS, _db_ratios, _service

Check = Callable[[], Ratio]
_REPORTED = float("inf")
ASYNC_TARGET = 1.05
INSERT_NAME = "users async: ORM insert 10,000 rows, async ratio / sync ratio (psycopg)"
SELECT_NAME = "users async: ORM select 10,000 rows, async ratio / sync ratio (psycopg)"


def checks() -> list[Check]:
    """The async-vs-sync ratio checks (insert and select, psycopg; asyncpg reported)."""
    import os

    from sqlalchemy import String, Uuid, create_engine, select, text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

    from greenlang_crypto.sqlalchemy import EMAIL, BlindIndex, EncryptedString

    url = os.environ["GLC_PG_URL"]
    svc = _service()
    suffix = uuid.uuid4().hex[:8]
    sync_engine = create_engine(url)
    async_urls = {
        "psycopg": url,
        "asyncpg": url.replace("postgresql+psycopg://", "postgresql+asyncpg://", 1),
    }
    loop = asyncio.new_event_loop()
    async_engines = {name: create_async_engine(u) for name, u in async_urls.items()}

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = f"gate_ausers_ours_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
        tenant: Mapped[str] = mapped_column(String(40))
        email: Mapped[str] = mapped_column(EncryptedString(svc, data_class="pii", tenant_id="t1"))
        email_bidx: Mapped[bytes] = mapped_column(BlindIndex("email", normalizer=EMAIL), index=True)

    class PlainUser(Base):
        __tablename__ = f"gate_ausers_plain_{suffix}"
        id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
        tenant: Mapped[str] = mapped_column(String(40))
        email: Mapped[str] = mapped_column(String(100), index=True)

    Base.metadata.create_all(sync_engine)
    emails = [f"user{i}@example.com" for i in range(N_ROWS)]

    def sync_insert(model: Any) -> Callable[[], None]:
        def run() -> None:
            with Session(sync_engine) as s:
                s.add_all(model(tenant="t1", email=e) for e in emails)
                s.commit()

        return run

    def async_insert(model: Any, driver: str) -> Callable[[], None]:
        engine = async_engines[driver]

        async def go() -> None:
            async with AsyncSession(engine) as s:
                s.add_all(model(tenant="t1", email=e) for e in emails)
                await s.commit()

        return lambda: loop.run_until_complete(go())

    def sync_select(model: Any) -> Callable[[], None]:
        stmt = select(model)

        def run() -> None:
            with Session(sync_engine) as s:
                got = s.scalars(stmt).all()
            assert len(got) == N_ROWS and got[0].email.endswith("@example.com")

        return run

    def async_select(model: Any, driver: str) -> Callable[[], None]:
        engine = async_engines[driver]
        stmt = select(model)

        async def go() -> None:
            async with AsyncSession(engine) as s:
                got = (await s.scalars(stmt)).all()
            assert len(got) == N_ROWS and got[0].email.endswith("@example.com")

        return lambda: loop.run_until_complete(go())

    def truncate() -> None:
        with sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for model in (User, PlainUser):
                conn.execute(text(f"TRUNCATE {model.__tablename__}"))
                conn.execute(text(f"VACUUM {model.__tablename__}"))
            conn.execute(text("CHECKPOINT"))

    def fill() -> None:
        truncate()
        sync_insert(User)()
        sync_insert(PlainUser)()
        with sync_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for model in (User, PlainUser):
                conn.execute(text(f"VACUUM ANALYZE {model.__tablename__}"))

    def pair_ratios(
        make_sync: Callable[[Any], Callable[[], None]],
        make_async: Callable[[Any, str], Callable[[], None]],
        setup: Callable[[], None] | None,
    ) -> dict[str, tuple[float, float, float]]:
        # Every side timed against the plain sync side in the same rounds; the ratios of the
        # plain async sides then turn each async ratio into "ours / plain" on its own path.
        sides: dict[str, Callable[[], object]] = {"sync ours": make_sync(User)}
        for driver in async_engines:
            sides[f"{driver} ours"] = make_async(User, driver)
            sides[f"{driver} plain"] = make_async(PlainUser, driver)
        return _db_ratios(sides, make_sync(PlainUser), rounds=14, setup=setup)

    measured: dict[str, dict[str, tuple[float, float, float]]] = {}

    def measure(kind: str) -> dict[str, tuple[float, float, float]]:
        if kind not in measured:
            if kind == "insert":
                measured[kind] = pair_ratios(sync_insert, async_insert, truncate)
            else:
                fill()
                measured[kind] = pair_ratios(sync_select, async_select, None)
        return measured[kind]

    def line(kind: str, driver: str, name: str, target: float) -> Check:
        def run() -> Ratio:
            if target != _REPORTED:
                # The gated line measures afresh, so a retry of a miss is a new measurement
                # (the report-only lines that follow read the same rounds).
                measured.pop(kind, None)
            m = measure(kind)
            sync_ratio, _, _ = m["sync ours"]
            ours, t_ours, _ = m[f"{driver} ours"]
            plain, t_plain, _ = m[f"{driver} plain"]
            async_ratio = ours / plain
            return Ratio(name, async_ratio / sync_ratio, target, False, t_ours, t_plain)

        return run

    def sync_line(kind: str) -> Check:
        def run() -> Ratio:
            r, t_ours, t_plain = measure(kind)["sync ours"]
            return Ratio(
                f"users async: sync ORM {kind} ratio, for reference (report only)",
                r,
                _REPORTED,
                False,
                t_ours,
                t_plain,
            )

        return run

    def close() -> None:
        # At exit rather than as a last check: the gate may re-run any check after the others.
        for engine in async_engines.values():
            loop.run_until_complete(engine.dispose())
        loop.close()
        Base.metadata.drop_all(sync_engine)
        sync_engine.dispose()
        svc.close()

    atexit.register(close)

    return [
        line("insert", "psycopg", INSERT_NAME, ASYNC_TARGET),
        line(
            "insert",
            "asyncpg",
            "users async: ORM insert, async ratio / sync ratio (asyncpg; report only)",
            _REPORTED,
        ),
        sync_line("insert"),
        line("select", "psycopg", SELECT_NAME, ASYNC_TARGET),
        line(
            "select",
            "asyncpg",
            "users async: ORM select, async ratio / sync ratio (asyncpg; report only)",
            _REPORTED,
        ),
        sync_line("select"),
    ]


def main() -> None:
    """Runs the checks once and prints their lines (``python -m benches.gate_sqlalchemy_async``)."""
    for check in checks():
        print(check().line(), flush=True)


if __name__ == "__main__":
    main()
