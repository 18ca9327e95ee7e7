"""The one small database layer shared by the key store and the audit sinks.

Both keep their state in SQLite (the embedded default) or PostgreSQL (a fleet), over DB-API.
This module owns what they would otherwise each write by hand: opening a connection the same
way (private files, WAL and full sync on SQLite; a fixed ``search_path`` and timeouts on
PostgreSQL), running the packaged DDL of one group (``greenlang_crypto.sql``) serialized
across processes, the placeholder style, and telling a value the database refuses from an
outage.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.sql import statements

__all__ = [
    "is_data_error",
    "open_postgres",
    "open_sqlite",
    "pg_dsn",
    "placeholders",
    "run_ddl",
    "schema_name",
]

_IDENT = re.compile(r"[a-z_][a-z0-9_]*")


def schema_name(schema: str, what: str) -> str:
    """``schema`` if it is a plain lowercase SQL identifier (it is written into DDL unquoted).

    Raises:
        ConfigurationError: It is not.
    """
    if not _IDENT.fullmatch(schema):
        raise ConfigurationError(f"{what} schema must be a lowercase SQL identifier")
    return schema


def pg_dsn(url: str) -> str:
    """A libpq DSN from a ``postgresql://`` or SQLAlchemy ``postgresql+psycopg://`` URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def placeholders(sql: str, dialect: str) -> str:
    """``sql`` written with ``?`` placeholders, in the dialect's style (``%s`` for psycopg)."""
    return sql if dialect == "sqlite" else sql.replace("?", "%s")


def open_sqlite(
    path: str | os.PathLike[str],
    *,
    timeout: float,
    autocommit: bool,
    read_only_fallback: bool = False,
) -> sqlite3.Connection:
    """Opens a SQLite database file the library owns: 0600 in a 0700 directory, WAL, full sync.

    The file is created 0600 before SQLite opens it (SQLite would create it 0666 & ~umask and
    gives its ``-wal`` and ``-shm`` files the database file's mode). The connection may be
    used from another thread than the one that opened it (closing at shutdown does).

    Args:
        path: The database file.
        timeout: Seconds to wait for a lock before ``database is locked``.
        autocommit: No implicit transactions (the caller issues ``BEGIN IMMEDIATE``);
            otherwise DB-API's deferred transactions.
        read_only_fallback: When the file exists but this process may not write it (a
            read-only mount, an immutable evidence copy), open it read-only instead of
            failing: reads work and every write fails.

    Raises:
        PermissionError: The file exists but cannot be written (and no fallback applies).
    """
    from greenlang_crypto._files import FILE_MODE, ensure_private_dir, ensure_private_file

    isolation: Literal["DEFERRED"] | None = None if autocommit else "DEFERRED"
    p = Path(path)
    # Never open and close the database file through a descriptor of our own once it exists:
    # closing any descriptor of a file drops every POSIX lock this process holds on it, the
    # locks SQLite's other connections here rely on. Existing files are checked by path.
    try:
        st = os.stat(p)
    except FileNotFoundError:
        ensure_private_file(p)
    else:
        ensure_private_dir(p.parent)
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid == os.geteuid() and mode & 0o077:
            # Take away what others may do; never give the owner back a write bit someone
            # removed on purpose (a log frozen as evidence).
            with contextlib.suppress(PermissionError):  # immutable: the check below decides
                os.chmod(p, mode & FILE_MODE)
        if not os.access(p, os.W_OK):
            if not read_only_fallback:
                raise PermissionError(f"{p} is not writable")
            return sqlite3.connect(
                p.resolve().as_uri() + "?mode=ro",
                uri=True,
                timeout=timeout,
                isolation_level=isolation,
                check_same_thread=False,
            )
    conn = sqlite3.connect(p, timeout=timeout, isolation_level=isolation, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def open_postgres(
    dsn: str,
    *,
    schema: str,
    connect_timeout: float,
    statement_timeout: float | None = None,
    what: str = "this store",
) -> Any:
    """Opens a psycopg connection whose unqualified table names resolve in ``schema`` only.

    Never in a stale copy elsewhere on the search path (tables created before V012 in ``public``).

    Raises:
        ConfigurationError: psycopg is not installed.
    """
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigurationError(
            f"{what} needs psycopg on PostgreSQL: pip install 'greenlang-crypto[sqlalchemy]'"
        ) from None
    options = f"-c search_path={schema}"
    if statement_timeout is not None:
        ms = max(1, int(statement_timeout * 1000))
        options = f"-c statement_timeout={ms} -c lock_timeout={ms} {options}"
    return psycopg.connect(
        dsn, connect_timeout=max(1, int(connect_timeout + 0.999)), options=options
    )


def run_ddl(cur: Any, group: str, dialect: str, *, schema: str, lock_id: int) -> None:
    """Runs the packaged DDL of ``group`` on ``cur``, in the caller's transaction.

    On PostgreSQL the transaction first takes the advisory lock ``lock_id``: processes
    starting at once would otherwise race on ``CREATE TABLE IF NOT EXISTS`` (the catalog's
    unique index). SQLite has no ``ADD COLUMN IF NOT EXISTS``; a "duplicate column" there
    means the column is already in place.
    """
    ddl: Sequence[str]
    if dialect == "postgresql":
        cur.execute(f"SELECT pg_advisory_xact_lock({int(lock_id)})")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema_name(schema, group)}")
        ddl = statements(group, dialect, schema=schema)
    else:
        ddl = statements(group, dialect)
    for statement in ddl:
        try:
            cur.execute(statement)
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is about the values written, not about the database being reachable.

    psycopg raises subclasses of ``DataError`` (``NumericValueOutOfRange`` for a value over
    INTEGER, ``StringDataRightTruncation``...): an exact-class test would take them for an
    outage, and a writer that retries outages would retry that value forever.
    """
    if isinstance(exc, UnicodeError | ValueError | TypeError):
        return True
    if isinstance(exc, sqlite3.DataError | sqlite3.InterfaceError):
        return True
    return any(
        c.__module__.startswith("psycopg") and c.__name__ == "DataError" for c in type(exc).__mro__
    )
