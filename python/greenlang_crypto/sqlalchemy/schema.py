# ruff: noqa: S608
# SQL text here holds only fixed table names and the quoted state schema; values are bound.
"""Applies the packaged SQL migrations (``greenlang_crypto/sql/V*.sql``) to PostgreSQL.

The migrations create and alter the library's own schema ``encryption`` only: key store, audit
log, job tables, and the ledger of applied migrations, ``encryption.glc_schema_migrations``.
Releases before this one kept the ledger in ``public.glc_schema_migrations``; the next run
folds it into the new one and drops it, so an old database keeps its applied versions and no
migration runs twice (only a ledger owned by the role running the migrations is trusted; any
other is left in place and the idempotent migrations run again). Reverting V011 drops the
whole schema, ledger included: afterwards the database holds nothing of the library (pgcrypto
aside, which others may use).

Each migration runs in one transaction together with its ledger row, under an advisory lock,
so concurrent ``db migrate`` runs apply it once. The SQL files are idempotent themselves too
(``IF NOT EXISTS`` everywhere), so a half-recorded state can simply be applied again.

The application's own tables are never touched by the migrations. The encrypted columns of
the requirements document's tables are an example (``sql/example_columns.sql``), applied only
by :func:`apply_example_columns` (``db migrate --example-columns``).
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.sql import EXAMPLE_COLUMNS, LEDGER_TABLE, LIBRARY_SCHEMA

__all__ = [
    "apply_example_columns",
    "apply_migrations",
    "available_migrations",
    "revert_example_columns",
    "revert_migrations",
    "status",
]

_RECORDS = f"{LIBRARY_SCHEMA}.{LEDGER_TABLE}"
#: Where releases before the move kept the ledger.
_LEGACY_RECORDS = f"public.{LEDGER_TABLE}"
_NAME = re.compile(r"^(V\d{3})__([a-z0-9_]+)\.sql$")


def available_migrations() -> list[tuple[str, str]]:
    """``(version, file name)`` of every packaged up-migration, in order.

    The example (``example_columns.sql``) is not a migration and is not listed.
    """
    files = resources.files("greenlang_crypto.sql")
    found = []
    for entry in files.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((match.group(1), entry.name))
    return sorted(found)


def _read(name: str) -> str:
    return resources.files("greenlang_crypto.sql").joinpath(name).read_text(encoding="utf-8")


def _run_script(conn: Connection, sql: str) -> None:
    # The scripts hold several statements and DO blocks; psycopg runs a parameterless
    # multi-statement string as one simple query, inside the current transaction.
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


def _exists(conn: Connection, table: str) -> bool:
    return bool(conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar())


def _lock(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        raise ConfigurationError("the SQL migrations are for PostgreSQL")
    # The same lock id as releases that kept the ledger in `public`: an old and a new
    # `db migrate` run at once still take turns.
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('glc_schema_migrations'))"))


def _prepare(conn: Connection, *, create: bool) -> bool:
    """Locks, folds a legacy ledger in; returns whether the ledger exists.

    ``create`` makes the schema and the ledger when they are missing (applying); reverting
    passes False, so that reverting an empty database leaves nothing behind.
    """
    _lock(conn)
    # Only a ledger this role owns is trusted: anyone allowed to create tables in `public`
    # could otherwise plant rows that make migrations be skipped. One it does not own is left
    # alone, and the migrations, idempotent, simply run again.
    legacy = bool(
        conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename = :t AND tableowner = current_user)"
            ),
            {"t": LEDGER_TABLE},
        ).scalar()
    )
    if not (create or legacy):
        return _exists(conn, _RECORDS)
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {LIBRARY_SCHEMA}"))
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {_RECORDS} (version TEXT PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    )
    if legacy:
        # In this transaction, under the lock: the versions an older release applied are
        # kept (with their dates), and no ledger is left outside the library's schema.
        conn.execute(
            text(
                f"INSERT INTO {_RECORDS} (version, name, applied_at) "
                f"SELECT version, name, applied_at FROM {_LEGACY_RECORDS} "
                "WHERE version = ANY(:known) ON CONFLICT (version) DO NOTHING"
            ),
            {"known": [v for v, _ in available_migrations()]},
        )
        conn.execute(text(f"DROP TABLE {_LEGACY_RECORDS}"))
    return True


def applied(conn: Connection) -> set[str]:
    """Versions recorded as applied (call it after the ledger is known to exist)."""
    return {str(v) for v in conn.execute(text(f"SELECT version FROM {_RECORDS}")).scalars()}


def apply_migrations(engine: Engine) -> list[str]:
    """Applies every packaged migration not yet recorded; returns the versions applied.

    Creates and alters objects of the ``encryption`` schema only.

    Raises:
        ConfigurationError: The engine is not PostgreSQL (nothing is written).
    """
    done = []
    for version, name in available_migrations():
        with engine.begin() as conn:
            _prepare(conn, create=True)
            if version in applied(conn):
                continue
            _run_script(conn, _read(name))
            conn.execute(
                text(f"INSERT INTO {_RECORDS} (version, name) VALUES (:v, :n)"),
                {"v": version, "n": name},
            )
            done.append(version)
    return done


def revert_migrations(engine: Engine, *, to_version: str | None = None) -> list[str]:
    """Reverts applied migrations newest first (down to, not including, ``to_version``).

    Reverting V011 drops the ``encryption`` schema with everything in it, the ledger too.
    Application tables are not touched (see :func:`revert_example_columns`).

    Raises:
        ConfigurationError: The engine is not PostgreSQL (nothing is written).
    """
    done = []
    for version, name in reversed(available_migrations()):
        if to_version is not None and version <= to_version:
            break
        with engine.begin() as conn:
            if not _prepare(conn, create=False):
                break  # no ledger: nothing of the library is applied
            if version not in applied(conn):
                continue
            _run_script(conn, _read(name.replace(".sql", ".down.sql")))
            if _exists(conn, _RECORDS):  # V011's revert drops the ledger with the schema
                conn.execute(text(f"DELETE FROM {_RECORDS} WHERE version = :v"), {"v": version})
            done.append(version)
    return done


def apply_example_columns(engine: Engine) -> None:
    """Adds the example's encrypted columns to the application tables that exist.

    ``sql/example_columns.sql``: ``<col>_enc``, ``<col>_key_version``, ``<col>_bidx`` and an
    index on the last, for ``users`` (email, phone), ``api_keys`` (key_value) and
    ``security.login_attempts`` (ip_address); a missing table is skipped. Idempotent, and not
    recorded in the ledger: these columns belong to the application, whose own migration tool
    should own them.

    Raises:
        ConfigurationError: The engine is not PostgreSQL (nothing is written).
    """
    with engine.begin() as conn:
        _lock(conn)
        _run_script(conn, _read(EXAMPLE_COLUMNS))


def revert_example_columns(engine: Engine) -> None:
    """Drops the example's columns and indexes again (their encrypted values are lost).

    Raises:
        ConfigurationError: The engine is not PostgreSQL (nothing is written).
    """
    with engine.begin() as conn:
        _lock(conn)
        _run_script(conn, _read(EXAMPLE_COLUMNS.replace(".sql", ".down.sql")))


def _ledger_rows(conn: Connection) -> list[dict[str, Any]]:
    # Read-only: `db status` creates nothing, and reads an old release's ledger in place.
    for table in (_RECORDS, _LEGACY_RECORDS):
        if _exists(conn, table):
            return [
                {"version": v, "name": n, "applied_at": a}
                for v, n, a in conn.execute(
                    text(f"SELECT version, name, applied_at FROM {table} ORDER BY version")
                )
            ]
    return []


def status(engine: Engine, *, state_schema: str = "encryption") -> dict[str, Any]:
    """Applied migrations, column-job ranges and quarantine counts (writes nothing).

    Raises:
        ConfigurationError: The engine is not PostgreSQL.
    """
    out: dict[str, Any] = {}
    with engine.begin() as conn:
        if conn.dialect.name != "postgresql":
            raise ConfigurationError("the SQL migrations are for PostgreSQL")
        schema = conn.dialect.identifier_preparer.quote(state_schema)
        out["migrations"] = _ledger_rows(conn)
        schema_ok = conn.execute(
            text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{state_schema}.glc_job_ranges"}
        ).scalar()
        if schema_ok:
            out["jobs"] = [
                {"job": j, "ranges": r, "done": d, "processed": p}
                for j, r, d, p in conn.execute(
                    text(
                        f"SELECT job, count(*), count(*) FILTER (WHERE state = 'done'), "
                        f"sum(processed) FROM {schema}.glc_job_ranges GROUP BY job "
                        "ORDER BY job"
                    )
                )
            ]
            out["quarantined"] = {
                j: n
                for j, n in conn.execute(
                    text(f"SELECT job, count(*) FROM {schema}.glc_quarantine GROUP BY job")
                )
            }
    return out
