"""Packaged SQL: the migrations, and the one source of every table the package creates.

``greenlang-crypto db migrate`` applies the migrations; the key store, the audit sinks and the
column jobs create their tables at run time from the same files. The migrations create and
alter objects of the library's own schema ``encryption`` only (:data:`LIBRARY_SCHEMA`, with
the migration ledger :data:`LEDGER_TABLE` in it), so a project whose own migration tool owns
the rest of the database sees nothing of them outside that schema.

The ``V*.sql`` files are written for PostgreSQL and mark their parts with ``-- group: NAME``
lines. :func:`statements` returns the statements of one group, in migration order, for
PostgreSQL (in a schema of the caller's choice) or translated for SQLite, so the key store,
the audit sinks and the column jobs create exactly what the migrations create.

``example_columns.sql`` (:data:`EXAMPLE_COLUMNS`, and its ``.down.sql``) is no migration: it
adds the encrypted columns of the requirements document's application tables (``users``,
``api_keys``, ``security.login_attempts``) and is applied only on request
(``db migrate --example-columns``). Its statements are the ``columns`` group.
"""

from __future__ import annotations

import os
import re
import zlib
from functools import cache
from pathlib import Path

__all__ = [
    "EXAMPLE_COLUMNS",
    "GROUPS",
    "LEDGER_TABLE",
    "LIBRARY_SCHEMA",
    "library_indexes",
    "library_tables",
    "migration_files",
    "schema_marker",
    "statements",
]

#: The groups the packaged SQL is divided into; ``columns`` is the example
#: (:data:`EXAMPLE_COLUMNS`), which the migrations do not apply.
GROUPS = ("keystore", "audit", "jobs", "columns")
#: The schema the migrations create and alter; nothing of theirs lives outside it.
LIBRARY_SCHEMA = "encryption"
#: The table, in :data:`LIBRARY_SCHEMA`, recording the applied migrations (releases before
#: it moved there kept it in ``public``).
LEDGER_TABLE = "glc_schema_migrations"
#: The example of the application-side columns, applied only on request.
EXAMPLE_COLUMNS = "example_columns.sql"

_FILE = re.compile(r"^V\d{3}__[a-z0-9_]+\.sql$")
_GROUP = re.compile(r"^--\s*group:\s*([a-z_]+)\s*$")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_DEFAULT_SCHEMA = LIBRARY_SCHEMA
_CREATE_TABLE = re.compile(r"\bCREATE TABLE IF NOT EXISTS encryption\.([a-z0-9_]+)")
_CREATE_INDEX = re.compile(r"\bCREATE INDEX IF NOT EXISTS ([a-z0-9_]+)\s+ON\s+encryption\.")
#: The migrations sit beside this module: the package, which holds a compiled extension,
#: is always installed as files (never imported from a zip), so no resource reader is needed.
_DIR = Path(__file__).parent


def migration_files() -> list[str]:
    """Names of the up-migrations, in order."""
    names = [name for name in os.listdir(_DIR) if _FILE.match(name)]
    return sorted(names)


def library_tables() -> frozenset[str]:
    """Names of the tables the migrations create in :data:`LIBRARY_SCHEMA`, and the ledger.

    Read from the migration files themselves, so a new migration's tables are included.
    """
    names = {
        m.group(1) for _, statement in _migrations() for m in _CREATE_TABLE.finditer(statement)
    }
    return frozenset({*names, LEDGER_TABLE})


def library_indexes() -> frozenset[str]:
    """Names of the indexes the migrations create on tables of :data:`LIBRARY_SCHEMA`."""
    return frozenset(
        m.group(1) for _, statement in _migrations() for m in _CREATE_INDEX.finditer(statement)
    )


def schema_marker() -> int:
    """A 31-bit digest of the set of migrations, for SQLite's ``PRAGMA user_version``.

    A SQLite file stamped with it already holds every table these migrations create, so
    opening it again skips reading, translating and running the DDL (a one-shot CLI command
    opens the key store once per run). A new migration changes the digest, and the next open
    runs the (idempotent) DDL again and restamps the file.
    """
    return zlib.crc32("\n".join(migration_files()).encode()) & 0x7FFFFFFF


def _split(script: str) -> list[tuple[str, str]]:
    """``(group, statement)`` pairs of one script; ``$$`` blocks stay whole."""
    out: list[tuple[str, str]] = []
    group = "setup"
    buf: list[str] = []
    in_dollar = False
    for line in script.splitlines():
        marker = _GROUP.match(line.strip())
        if marker and not in_dollar:
            group = marker.group(1)
            continue
        stripped = line.strip()
        if not in_dollar and (not stripped or stripped.startswith("--")):
            continue
        buf.append(line)
        if line.count("$$") % 2:
            in_dollar = not in_dollar
        if not in_dollar and stripped.endswith(";"):
            statement = "\n".join(buf).strip().removesuffix(";").strip()
            out.append((group, statement))
            buf = []
    if buf:
        raise ValueError("unterminated SQL statement in a migration")
    return out


@cache
def _migrations() -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for name in migration_files():
        pairs.extend(_split((_DIR / name).read_text(encoding="utf-8")))
    return tuple(pairs)


@cache
def _all() -> tuple[tuple[str, str], ...]:
    # The example last: its statements alter application tables, never the library's.
    return (*_migrations(), *_split((_DIR / EXAMPLE_COLUMNS).read_text(encoding="utf-8")))


def _to_sqlite(statement: str) -> str | None:
    upper = statement.upper()
    if upper.startswith(("DO ", "DO\n", "DO$$", "CREATE SCHEMA", "CREATE EXTENSION")):
        return None  # PostgreSQL only (schemas, extensions, PL/pgSQL)
    out = re.sub(r"\bencryption\.", "", statement)
    out = re.sub(r"\bBYTEA\b", "BLOB", out)
    out = re.sub(r"\bTIMESTAMPTZ\b", "TEXT", out)
    out = re.sub(r"DEFAULT now\(\)", "DEFAULT CURRENT_TIMESTAMP", out)
    # SQLite has no ADD COLUMN IF NOT EXISTS: callers treat "duplicate column" as done.
    return out.replace("ADD COLUMN IF NOT EXISTS", "ADD COLUMN")


def statements(group: str, dialect: str, *, schema: str = _DEFAULT_SCHEMA) -> list[str]:
    """The DDL of one group, in migration order, ready to execute one statement at a time.

    Args:
        group: One of :data:`GROUPS` (``keystore``, ``audit``, ``jobs``, or ``columns``:
            the example's application columns, which ``db migrate`` applies only with
            ``--example-columns``).
        dialect: ``postgresql`` or ``sqlite``.
        schema: PostgreSQL schema for the tables (default ``encryption``, the migrations'
            own); a lowercase SQL identifier. Ignored for SQLite, which has no schemas.

    With ``schema="public"`` the blocks that move tables created before V012 (in ``public``)
    are left out (there is nothing to move). Every statement is idempotent (``IF NOT EXISTS``,
    ``ON CONFLICT DO NOTHING``), except that on SQLite an ``ALTER TABLE ... ADD COLUMN`` fails
    with "duplicate column" when the column exists, which the caller treats as done.

    Raises:
        ValueError: Unknown group or dialect, or a schema that is not a plain identifier.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown SQL group {group!r}")
    if dialect not in ("postgresql", "sqlite"):
        raise ValueError(f"unknown SQL dialect {dialect!r}")
    if not _IDENT.match(schema):
        raise ValueError("schema must be a lowercase SQL identifier")
    out = []
    for g, statement in _all():
        if g != group:
            continue
        if dialect == "sqlite":
            converted = _to_sqlite(statement)
            if converted is not None:
                out.append(converted)
        elif schema == _DEFAULT_SCHEMA:
            out.append(statement)
        elif schema == "public" and statement.upper().startswith("DO") and "'public." in statement:
            # The blocks that move tables out of `public` would move them onto themselves.
            continue
        else:
            out.append(re.sub(r"\bencryption\b", schema, statement))
    return out
