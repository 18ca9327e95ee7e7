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
