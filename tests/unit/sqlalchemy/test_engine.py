"""``psycopg_engine_options``: a cursor asking for binary results, and statement errors that
never show bound values (round trips on a server: ``tests/integration/sqlalchemy/
test_engine_options.py``)."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from greenlang_crypto.sqlalchemy import psycopg_engine_options as exported
from greenlang_crypto.sqlalchemy.engine import psycopg_engine_options


def test_the_options_name_a_binary_cursor_and_hide_parameters() -> None:
    options = psycopg_engine_options()
    assert set(options) == {"connect_args", "hide_parameters"}
    assert options["hide_parameters"] is True
    factory = options["connect_args"]["cursor_factory"]
    assert issubclass(factory, psycopg.Cursor)
    assert exported is psycopg_engine_options


def test_the_cursor_asks_for_binary_results() -> None:
    factory = psycopg_engine_options()["connect_args"]["cursor_factory"]

    class _Conn:
        """What a psycopg cursor reads from its connection when it is built."""

        pgconn = None
        adapters = psycopg.adapt.AdaptersMap(psycopg.adapters)
        row_factory = staticmethod(psycopg.rows.tuple_row)

    assert psycopg.Cursor(_Conn()).format == psycopg.pq.Format.TEXT  # type: ignore[arg-type]
    assert factory(_Conn()).format == psycopg.pq.Format.BINARY


def test_an_engine_built_with_them_hides_bound_values_from_errors() -> None:
    engine = create_engine("sqlite://", hide_parameters=psycopg_engine_options()["hide_parameters"])
    with engine.connect() as conn, pytest.raises(OperationalError) as info:
        conn.execute(text("SELECT * FROM missing WHERE secret = :s"), {"s": "hunter2"})
    assert "hunter2" not in str(info.value)
    engine.dispose()


def test_async_options_per_driver() -> None:
    from sqlalchemy.engine import make_url

    from greenlang_crypto.exceptions import InvalidArgumentError
    from greenlang_crypto.sqlalchemy import async_engine_options

    for spec in ("psycopg", "postgresql+psycopg://app@db/app", make_url("postgresql+psycopg://h")):
        options = async_engine_options(spec)
        assert options["hide_parameters"] is True
        factory = options["connect_args"]["cursor_factory"]
        # An asyncio connection needs an asyncio cursor (a sync one has no __aenter__).
        assert issubclass(factory, psycopg.AsyncCursor)
        assert not issubclass(factory, psycopg.Cursor)
    # asyncpg takes no cursor_factory (it receives bytea in binary already).
    assert async_engine_options("asyncpg") == {"hide_parameters": True}
    assert async_engine_options("postgresql+asyncpg://app@db/app") == {"hide_parameters": True}
    with pytest.raises(InvalidArgumentError, match="pg8000"):
        async_engine_options("postgresql+pg8000://app@db/app")


def test_the_async_cursor_asks_for_binary_results() -> None:
    from greenlang_crypto.sqlalchemy.engine import async_engine_options

    factory = async_engine_options()["connect_args"]["cursor_factory"]

    class _Conn:
        pgconn = None
        adapters = psycopg.adapt.AdaptersMap(psycopg.adapters)
        row_factory = staticmethod(psycopg.rows.tuple_row)

    assert psycopg.AsyncCursor(_Conn()).format == psycopg.pq.Format.TEXT  # type: ignore[arg-type]
    assert factory(_Conn()).format == psycopg.pq.Format.BINARY
