"""Fixtures for the SQLAlchemy layer against a real PostgreSQL (GLC_PG_URL) and SQLite.

Each test session works in a private database created from GLC_PG_URL (dropped at the end), so
concurrent sessions of other suites on the same server never see these tables. Without
GLC_PG_URL the tests skip locally and fail when ``CI`` is set.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from tests.conftest import pg_private_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a private database with pgcrypto, created for this session."""
    with pg_private_database("glc_sa", sqlalchemy_url=True) as url:
        eng = create_engine(url)
        with eng.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pgcrypto"))
        eng.dispose()
        yield url


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """An engine on the private database (disposed after the test)."""
    eng = create_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A file-backed SQLite engine."""
    eng = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    yield eng
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Both backends."""
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def make_service(data_dir: Path) -> EncryptionService:
    """An EncryptionService on the embedded local provider in ``data_dir``."""
    provider = LocalKeyProvider(data_dir)
    if not provider.versions():
        provider.create_master_key()
    return EncryptionService(EncryptionServiceConfig(data_dir=data_dir))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The service's data directory (master key, SQLite key store)."""
    d = tmp_path / "keys"
    d.mkdir()
    return d


@pytest.fixture
def service(data_dir: Path) -> Iterator[EncryptionService]:
    """A fresh service (closed after the test)."""
    svc = make_service(data_dir)
    yield svc
    svc.close()


@pytest.fixture
def table_name() -> str:
    """A unique table name, so tests never collide."""
    return f"t_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique names with a prefix."""

    def make(prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:8]}"

    return make


def drop_table(engine: Engine, name: str) -> None:
    """Drops a table if it exists."""
    with engine.begin() as conn:
        conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    """One value from a query."""
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()
