"""Fixtures shared by every test directory: PostgreSQL databases and a small full disk.

PostgreSQL is the server named by ``GLC_PG_URL``, which ``scripts/services.sh start`` exports
(``postgresql+psycopg://...``). Without it a test needing PostgreSQL is skipped, except under
CI, where a missing server is a failure.

- :func:`pg_server_url` and the ``pg_dsn`` fixture: the shared database itself.
- :func:`pg_private_database` and the ``pg_database`` fixture: a database created for one test
  (or, through the helper, one module or session), dropped afterwards even if clients are
  still connected. Key stores, audit logs, LISTEN/NOTIFY traffic and migrations touching fixed
  names stay apart from every other test's.
- ``tiny_fs``: a 1 MiB tmpfs (root only), for writes that must fail on a full disk.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# `kill -USR1 <pid>` prints every thread's stack (a run that hangs or grows without end in
# CI can then be located from outside without stopping it).
if hasattr(faulthandler, "register"):
    import signal as _signal

    faulthandler.register(_signal.SIGUSR1, all_threads=True)

_DRIVER_PREFIX = "postgresql+psycopg://"


def pg_server_url() -> str:
    """``GLC_PG_URL`` as exported (SQLAlchemy form); skips the test when it is not set."""
    url = os.environ.get("GLC_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("GLC_PG_URL is not set (CI must start PostgreSQL: scripts/services.sh)")
        pytest.skip("GLC_PG_URL not set; start services with scripts/services.sh")
    return url


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead (its query string kept)."""
    path, mark, query = url.partition("?")
    return f"{path.rpartition('/')[0]}/{name}{mark}{query}"


def libpq_url(url: str) -> str:
    """``url`` in the form psycopg and libpq take (no ``+psycopg`` driver suffix)."""
    return url.replace(_DRIVER_PREFIX, "postgresql://", 1)


def pg_query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of one statement, on a connection of its own (autocommit)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


def pg_columns(url: str, schema: str, table: str) -> list[tuple[str, str]]:
    """``(name, type)`` of a table's columns, in order."""
    return [
        (str(c), str(t))
        for c, t in pg_query(
            url,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            schema,
            table,
        )
    ]


@contextlib.contextmanager
def pg_private_database(prefix: str, *, sqlalchemy_url: bool = False) -> Iterator[str]:
    """Creates a database named ``<prefix>_<random>`` on the test server; yields its URL.

    The URL is a libpq one (``postgresql://``) unless ``sqlalchemy_url``, which keeps the
    scheme of ``GLC_PG_URL``. The database is dropped ``WITH (FORCE)`` afterwards, so a
    client a failed test left connected does not keep it alive.
    """
    import psycopg

    server = pg_server_url()
    admin = libpq_url(server)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server if sqlalchemy_url else admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_prefix(request: pytest.FixtureRequest) -> str:
    """``glc_<module>``: a database left behind by a killed run names the test file it
    came from."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    return "glc_" + re.sub(r"[^a-z0-9_]", "_", module.lower())[:30]


@pytest.fixture
def pg_dsn() -> str:
    """libpq URL of the shared test database (tests there use names of their own)."""
    return libpq_url(pg_server_url())


@pytest.fixture
def pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """libpq URL of a database of this test's own, dropped after the test."""
    with pg_private_database(database_prefix(request)) as url:
        yield url


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards whatever the test did (a full disk on demand)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
