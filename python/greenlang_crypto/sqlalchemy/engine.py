"""Engine options that make encrypted columns cheap to read on PostgreSQL.

psycopg receives results in PostgreSQL's text format by default, where a ``bytea`` value
travels as hex and is decoded per row: reading an envelope column costs about 1.6x a text
column before any decryption happens. In binary format the same bytes arrive as they are
(about 1.05x). :func:`psycopg_engine_options` switches every cursor of an engine to binary
results; psycopg converts every built-in type from either format, so application code sees
the same Python values. :func:`async_engine_options` is the same for ``create_async_engine``,
with psycopg's asyncio cursor or with asyncpg (which always receives binary results).
"""

from __future__ import annotations

from typing import Any

__all__ = ["async_engine_options", "psycopg_engine_options"]


def psycopg_engine_options() -> dict[str, Any]:
    """``create_engine`` keyword arguments for binary result format with psycopg 3.

    For ``create_async_engine`` use :func:`async_engine_options` instead: this cursor is a
    synchronous one, which an asyncio connection cannot use.

    Example::

        engine = create_engine("postgresql+psycopg://app@db/app", **psycopg_engine_options())
    """
    import psycopg

    class BinaryResultCursor(psycopg.Cursor[Any]):
        """A psycopg cursor that asks the server for results in binary format."""

        def __init__(self, connection: Any, *, row_factory: Any = None) -> None:
            super().__init__(connection, row_factory=row_factory)
            self.format = psycopg.pq.Format.BINARY

    # hide_parameters: statement errors must not show bound values (plaintexts, keys).
    return {"connect_args": {"cursor_factory": BinaryResultCursor}, "hide_parameters": True}


def async_engine_options(driver: Any = "psycopg") -> dict[str, Any]:
    """``create_async_engine`` keyword arguments for binary results, per asyncio driver.

    Args:
        driver: ``"psycopg"`` or ``"asyncpg"``, or the database URL (a ``str`` or
            ``sqlalchemy.engine.URL``), whose driver is used.

    Returns:
        For psycopg, a binary-results asyncio cursor (an ``AsyncCursor``: the synchronous
        cursor of :func:`psycopg_engine_options` fails on an asyncio connection); for asyncpg,
        which receives ``bytea`` in binary already, no connection argument. Both hide bound
        parameters in statement errors.

    Raises:
        InvalidArgumentError: Another driver.

    Example::

        url = "postgresql+asyncpg://app@db/app"
        engine = create_async_engine(url, **async_engine_options(url))
    """
    from sqlalchemy.engine import make_url

    from greenlang_crypto.exceptions import InvalidArgumentError

    name = driver
    if not isinstance(driver, str) or "://" in driver:
        name = make_url(driver).get_driver_name()
    if name in ("psycopg", "psycopg_async"):
        import psycopg

        class AsyncBinaryResultCursor(psycopg.AsyncCursor[Any]):
            """A psycopg asyncio cursor that asks the server for results in binary format."""

            def __init__(self, connection: Any, *, row_factory: Any = None) -> None:
                super().__init__(connection, row_factory=row_factory)
                self.format = psycopg.pq.Format.BINARY

        return {
            "connect_args": {"cursor_factory": AsyncBinaryResultCursor},
            "hide_parameters": True,
        }
    if name == "asyncpg":
        return {"hide_parameters": True}
    raise InvalidArgumentError(f"no asyncio engine options for driver {name!r}")
