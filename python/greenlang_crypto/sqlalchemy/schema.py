# ruff: noqa: S608
# SQL text here holds only fixed table names and the quoted state schema; values are bound.
"""Applies the packaged SQL migrations (``greenlang_crypto/sql/V*.sql``) to PostgreSQL.

Applied migrations are recorded in ``public.glc_schema_migrations`` (outside the
``encryption`` schema, so reverting V011, which drops that schema, keeps the record table).
Each migration runs in one transaction together with its record row, under an advisory lock,
so concurrent ``db migrate`` runs apply it once. The SQL files are idempotent themselves too
(``IF NOT EXISTS`` everywhere), so a half-recorded state can simply be applied again.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from greenlang_crypto.exceptions import ConfigurationError

__all__ = ["apply_migrations", "available_migrations", "revert_migrations", "status"]

_RECORDS = "public.glc_schema_migrations"
_NAME = re.compile(r"^(V\d{3})__([a-z0-9_]+)\.sql$")


def available_migrations() -> list[tuple[str, str]]:
    """``(version, file name)`` of every packaged up-migration, in order."""
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


def _prepare(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        raise ConfigurationError("the SQL migrations are for PostgreSQL")
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('glc_schema_migrations'))"))
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {_RECORDS} (version TEXT PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    )


def applied(conn: Connection) -> set[str]:
    """Versions recorded as applied."""
    return {str(v) for v in conn.execute(text(f"SELECT version FROM {_RECORDS}")).scalars()}


def apply_migrations(engine: Engine) -> list[str]:
    """Applies every packaged migration not yet recorded; returns the versions applied."""
    done = []
    for version, name in available_migrations():
        with engine.begin() as conn:
            _prepare(conn)
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
    """Reverts applied migrations newest first (down to, not including, ``to_version``)."""
    done = []
    for version, name in reversed(available_migrations()):
        if to_version is not None and version <= to_version:
            break
        with engine.begin() as conn:
            _prepare(conn)
            if version not in applied(conn):
                continue
            _run_script(conn, _read(name.replace(".sql", ".down.sql")))
            conn.execute(text(f"DELETE FROM {_RECORDS} WHERE version = :v"), {"v": version})
            done.append(version)
    return done


def status(engine: Engine, *, state_schema: str = "encryption") -> dict[str, Any]:
    """Applied migrations, column-job ranges and quarantine counts."""
    out: dict[str, Any] = {}
    with engine.begin() as conn:
        _prepare(conn)
        schema = conn.dialect.identifier_preparer.quote(state_schema)
        out["migrations"] = [
            {"version": v, "name": n, "applied_at": a}
            for v, n, a in conn.execute(
                text(f"SELECT version, name, applied_at FROM {_RECORDS} ORDER BY version")
            )
        ]
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
