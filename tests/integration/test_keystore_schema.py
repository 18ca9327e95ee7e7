"""One schema: the key store uses the tables the migrations create (``encryption.*`` on
PostgreSQL), moves a store created in ``public`` before V012, and its DDL comes
from the packaged SQL files only."""

from __future__ import annotations

from typing import Any

import pytest

from greenlang_crypto.keys.store import open_key_store
from greenlang_crypto.sql import GROUPS, statements

pytestmark = pytest.mark.integration

#: The key store as created before V012, in `public` (before the use counters).
_OLD_PUBLIC_DDL = [
    "CREATE TABLE public.glc_key_versions (version INTEGER PRIMARY KEY, state TEXT NOT NULL, "
    "provider TEXT NOT NULL, wrapping_key_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT "
    "NULL, rotated_at DOUBLE PRECISION)",
    "CREATE TABLE public.glc_keyring (id INTEGER PRIMARY KEY, min_decryption_version INTEGER "
    "NOT NULL)",
    "CREATE TABLE public.glc_deks (dek_id BIGINT PRIMARY KEY, key_version INTEGER NOT NULL, "
    "provider TEXT NOT NULL, wrapping_key_id TEXT NOT NULL, wrapped BYTEA NOT NULL, "
    "context_json TEXT NOT NULL, context_digest BYTEA NOT NULL, created_at DOUBLE PRECISION "
    "NOT NULL, rewrapped_at DOUBLE PRECISION)",
    "CREATE TABLE public.glc_index_keys (version INTEGER PRIMARY KEY, state TEXT NOT NULL, "
    "provider TEXT NOT NULL, wrapping_key_id TEXT NOT NULL, wrapped BYTEA NOT NULL, "
    "created_at DOUBLE PRECISION NOT NULL)",
    "INSERT INTO public.glc_key_versions VALUES (1, 'active', 'local', 'local:master-v1', 1, 2)",
    "INSERT INTO public.glc_key_versions VALUES (2, 'primary', 'local', 'local:master-v2', 2, "
    "NULL)",
    "INSERT INTO public.glc_keyring VALUES (1, 1)",
    "INSERT INTO public.glc_deks VALUES (42, 1, 'local', 'local:master-v1', '\\x00', '{}', "
    "'\\x00', 1, NULL)",
]


def _query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, params).fetchall())


def _columns(url: str, schema: str) -> dict[str, set[str]]:
    rows = _query(
        url,
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name LIKE 'glc_%%'",
        schema,
    )
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return out


def test_key_store_lives_in_the_encryption_schema(pg_database: str) -> None:
    store = open_key_store(pg_database)
    store.add_primary_version("local", "local:master-v1")
    store.close()
    tables = _columns(pg_database, "encryption")
    assert {"glc_key_versions", "glc_deks", "glc_instances", "glc_keyring_changes"} <= set(tables)
    assert {"messages", "bytes"} <= tables["glc_deks"]
    assert _columns(pg_database, "public") == {}


def test_a_public_key_store_moves_into_the_encryption_schema(pg_database: str) -> None:
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        # What V011 made next to it: empty tables in `encryption`.
        for statement in statements("keystore", "postgresql"):
            if "glc_key_versions (" in statement or statement.startswith("CREATE SCHEMA"):
                conn.execute(statement)
        for statement in _OLD_PUBLIC_DDL:
            conn.execute(statement)
    store = open_key_store(pg_database)
    assert [v.version for v in store.versions()] == [1, 2]
    assert store.count_deks_by_version() == {1: 1}
    assert store.usage_by_version() == {1: (1, 0, 0)}  # the counters were added in place
    assert {w.wrapping_key_id for w in store.wrapping_keys()} == {
        "local:master-v1",
        "local:master-v2",
    }
    store.close()
    assert _columns(pg_database, "public") == {}


def test_store_ddl_equals_the_migrations(pg_database: str) -> None:
    from sqlalchemy import create_engine

    from greenlang_crypto.sqlalchemy.schema import apply_migrations

    engine = create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://", 1))
    apply_migrations(engine)
    engine.dispose()
    migrated = _columns(pg_database, "encryption")
    store = open_key_store(pg_database, schema="store_made")
    store.close()
    made = _columns(pg_database, "store_made")
    assert made
    assert {t: migrated[t] for t in made} == made


def test_sqlite_ddl_runs_for_every_group(tmp_path: Any) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "x.db")
    for group in GROUPS:
        for statement in statements(group, "sqlite"):
            try:
                conn.execute(statement)
            except sqlite3.OperationalError as exc:
                assert "duplicate column" in str(exc)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"glc_deks", "glc_audit", "glc_job_ranges", "glc_instances"} <= names
    conn.close()
    with pytest.raises(ValueError):
        statements("keystore", "postgresql", schema="bad; DROP")
