"""``db migrate`` creates and alters the schema ``encryption`` only.

A snapshot of the catalog outside that schema (schemas, relations, columns, constraints,
indexes, functions, types, triggers, extensions) is taken before and after: it must not
change, whether the migrations run through the CLI or in process, and an application's own
``users`` table keeps its columns. The example columns change it only on request. A ledger an
older release kept in ``public.glc_schema_migrations`` is folded in: nothing runs twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from greenlang_crypto.sql import LIBRARY_SCHEMA, library_indexes, library_tables
from greenlang_crypto.sqlalchemy.schema import (
    apply_example_columns,
    apply_migrations,
    available_migrations,
    revert_example_columns,
    revert_migrations,
    status,
)
from tests.conftest import pg_columns, pg_private_database, pg_query
from tests.integration.sqlalchemy._jobs import REPO, run_cli

pytestmark = pytest.mark.integration

#: Schemas that are PostgreSQL's own, and the library's.
_SKIP = (
    "n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema' "
    f"AND n.nspname <> '{LIBRARY_SCHEMA}'"
)
#: Objects created by an extension (pgcrypto's functions) are the extension's.
_NOT_EXT = (
    "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {cat}::regclass "
    "AND d.objid = {oid} AND d.deptype = 'e')"
)

#: The application's schema, as its own migration tool made it.
_APP_DDL = (
    "CREATE SCHEMA security",
    "CREATE TABLE security.login_attempts (id BIGINT PRIMARY KEY, ip_address TEXT NOT NULL)",
    "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT UNIQUE, phone TEXT, "
    "display_name TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX users_phone ON users (phone)",
    "CREATE TABLE api_keys (id BIGINT PRIMARY KEY, user_id BIGINT REFERENCES users (id), "
    "key_value TEXT)",
    "INSERT INTO users (id, email, phone) VALUES (1, 'a@example.com', '+100')",
)

#: The ledger as releases before the move created it.
_LEGACY_LEDGER = (
    "CREATE TABLE public.glc_schema_migrations (version TEXT PRIMARY KEY, "
    "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)

#: What the example adds: (schema, table, column, type) and its indexes.
_EXAMPLE_COLUMNS = {
    (schema, table, f"{col}{suffix}", kind)
    for schema, table, col in (
        ("security", "login_attempts", "ip_address"),
        ("public", "users", "email"),
        ("public", "users", "phone"),
        ("public", "api_keys", "key_value"),
    )
    for suffix, kind in (("_enc", "bytea"), ("_key_version", "integer"), ("_bidx", "bytea"))
}
_EXAMPLE_INDEXES = {
    ("security", "glc_security_login_attempts_ip_address_bidx"),
    ("public", "glc_users_email_bidx"),
    ("public", "glc_users_phone_bidx"),
    ("public", "glc_api_keys_key_value_bidx"),
}


def snapshot(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every object of the database outside the library's and PostgreSQL's own schemas."""
    q = {
        "schemas": f"SELECT n.nspname FROM pg_namespace n WHERE {_SKIP}",
        "relations": "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_SKIP}",
        "columns": "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, "
        "a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum "
        "WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
        f"AND {_SKIP}",
        "constraints": "SELECT n.nspname, c.conname, pg_get_constraintdef(c.oid) "
        f"FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE {_SKIP}",
        "indexes": "SELECT schemaname, indexname, indexdef FROM pg_indexes n "
        "WHERE " + _SKIP.replace("n.nspname", "n.schemaname"),
        "functions": "SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        f"WHERE {_SKIP} AND " + _NOT_EXT.format(cat="'pg_proc'", oid="p.oid"),
        "types": "SELECT n.nspname, t.typname FROM pg_type t "
        "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typrelid = 0 "
        f"AND t.typelem = 0 AND {_SKIP} AND " + _NOT_EXT.format(cat="'pg_type'", oid="t.oid"),
        "triggers": "SELECT n.nspname, c.relname, t.tgname FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE NOT t.tgisinternal AND {_SKIP}",
    }
    out = {name: set(pg_query(url, sql)) for name, sql in q.items()}
    out["extensions"] = set(pg_query(url, "SELECT extname FROM pg_extension"))
    return out


def _diff(before: dict[str, set[Any]], after: dict[str, set[Any]]) -> dict[str, Any]:
    return {
        k: {"added": after[k] - before[k], "removed": before[k] - after[k]}
        for k in before
        if before[k] != after[k]
    }


def _exec(url: str, *statements: str) -> None:
    """Runs statements (scripts too) that return no rows, each on its own, autocommitted."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _library_tables(url: str) -> set[str]:
    rows = pg_query(url, "SELECT tablename FROM pg_tables WHERE schemaname = %s", LIBRARY_SCHEMA)
    return {str(r[0]) for r in rows}


def _versions() -> list[str]:
    return [v for v, _ in available_migrations()]


@pytest.fixture
def app_db() -> Iterator[tuple[str, str]]:
    """(libpq URL, SQLAlchemy URL) of a private database holding the application's tables."""
    with pg_private_database("glc_scope", sqlalchemy_url=True) as sa_url:
        url = sa_url.replace("postgresql+psycopg://", "postgresql://", 1)
        _exec(url, *_APP_DDL)
        yield url, sa_url


@pytest.fixture
def engine(app_db: tuple[str, str]) -> Iterator[Engine]:
    eng = create_engine(app_db[1])
    try:
        yield eng
    finally:
        eng.dispose()


def _cli(sa_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        [sys.executable, "-m", "greenlang_crypto", "db", "migrate", "--url", sa_url, *args]
    )


def test_the_snapshot_sees_columns_indexes_and_tables_outside_the_library_schema(
    app_db: tuple[str, str],
) -> None:
    # The check below is only as good as the snapshot: it must see what the old `db migrate`
    # did (a ledger in public, columns and an index on users).
    url, _ = app_db
    before = snapshot(url)
    _exec(
        url,
        "CREATE TABLE public.glc_schema_migrations (version TEXT PRIMARY KEY)",
        "ALTER TABLE users ADD COLUMN email_bidx BYTEA",
        "CREATE INDEX glc_users_email_bidx ON users (email_bidx)",
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    )
    diff = _diff(before, snapshot(url))
    assert {"relations", "columns", "constraints", "indexes", "functions"} <= set(diff)
    assert ("public", "users", "email_bidx", "bytea", False, None) in diff["columns"]["added"]


@pytest.mark.parametrize("how", ["cli", "python"])
def test_migrate_changes_nothing_outside_the_encryption_schema(
    app_db: tuple[str, str], engine: Engine, how: str
) -> None:
    url, sa_url = app_db
    users = pg_columns(url, "public", "users")
    before = snapshot(url)
    if how == "cli":
        up = _cli(sa_url)
        assert up.returncode == 0, up.stderr
        assert up.stdout == f"applied: {', '.join(_versions())}\n"
    else:
        assert apply_migrations(engine) == _versions()
    after = snapshot(url)
    # pgcrypto is the one addition (an extension: its functions are its own, and Alembic
    # does not compare extensions).
    assert after["extensions"] - before["extensions"] <= {("pgcrypto",)}
    before["extensions"] = after["extensions"]
    assert _diff(before, after) == {}
    assert pg_columns(url, "public", "users") == users
    assert pg_query(url, "SELECT id, email, phone FROM users") == [(1, "a@example.com", "+100")]
    # Everything the migrations create is in the library's schema, the ledger too.
    assert _library_tables(url) >= library_tables()
    indexes = {
        r[0]
        for r in pg_query(
            url, "SELECT indexname FROM pg_indexes WHERE schemaname = %s", LIBRARY_SCHEMA
        )
    }
    assert indexes >= library_indexes()
    ledger = pg_query(url, "SELECT version FROM encryption.glc_schema_migrations ORDER BY 1")
    assert [r[0] for r in ledger] == _versions()

    # Down: the library's schema goes, the application's stays as it was.
    if how == "cli":
        down = _cli(sa_url, "--down")
        assert down.returncode == 0, down.stderr
    else:
        assert revert_migrations(engine) == _versions()[::-1]
    gone = snapshot(url)
    assert _diff(after, gone) == {}
    assert not pg_query(url, "SELECT 1 FROM pg_namespace WHERE nspname = %s", LIBRARY_SCHEMA)


def test_status_on_an_empty_database_writes_nothing(
    app_db: tuple[str, str], engine: Engine
) -> None:
    url, _ = app_db
    before = snapshot(url)
    assert status(engine) == {"migrations": []}
    assert _diff(before, snapshot(url)) == {}
    assert not pg_query(url, "SELECT 1 FROM pg_namespace WHERE nspname = %s", LIBRARY_SCHEMA)
    assert revert_migrations(engine) == []  # nothing to revert, and nothing created
    assert not pg_query(url, "SELECT 1 FROM pg_namespace WHERE nspname = %s", LIBRARY_SCHEMA)


def test_example_columns_only_on_request_and_reverted(app_db: tuple[str, str]) -> None:
    url, sa_url = app_db
    before = snapshot(url)
    up = _cli(sa_url, "--example-columns")
    assert up.returncode == 0, up.stderr
    assert up.stdout.splitlines() == [
        f"applied: {', '.join(_versions())}",
        "applied: example columns",
    ]
    after = snapshot(url)
    added = {(s, t, c, kind) for s, t, c, kind, _, _ in after["columns"] - before["columns"]}
    assert added == _EXAMPLE_COLUMNS
    assert {(s, i) for s, i, _ in after["indexes"] - before["indexes"]} == _EXAMPLE_INDEXES
    assert before["columns"] <= after["columns"]  # nothing of the application's changed
    # Idempotent, and the migrations are not applied again.
    again = _cli(sa_url, "--example-columns")
    assert again.stdout.splitlines() == [
        "applied: nothing (up to date)",
        "applied: example columns",
    ]
    assert snapshot(url) == after

    down = _cli(sa_url, "--down", "--example-columns")
    assert down.returncode == 0 and down.stdout == "reverted: example columns\n", down.stderr
    reverted = snapshot(url)
    reverted["extensions"] = before["extensions"]
    assert _diff(before, reverted) == {}
    assert _library_tables(url) >= library_tables()  # the key store stays
    assert pg_query(url, "SELECT id, email, phone FROM users") == [(1, "a@example.com", "+100")]


def test_example_columns_skip_missing_tables_in_process(
    engine: Engine, app_db: tuple[str, str]
) -> None:
    url, _ = app_db
    _exec(url, "DROP TABLE api_keys", "DROP TABLE security.login_attempts")
    apply_example_columns(engine)  # needs no library schema
    assert [c for c, _ in pg_columns(url, "public", "users")] == [
        "id", "email", "phone", "display_name",
        "email_enc", "email_key_version", "email_bidx",
        "phone_enc", "phone_key_version", "phone_bidx",
    ]  # fmt: skip
    assert not pg_query(url, "SELECT 1 FROM pg_namespace WHERE nspname = %s", LIBRARY_SCHEMA)
    revert_example_columns(engine)
    revert_example_columns(engine)  # idempotent
    assert [c for c, _ in pg_columns(url, "public", "users")] == [
        "id", "email", "phone", "display_name",
    ]  # fmt: skip


def _as_old_release(url: str, versions: list[str]) -> None:
    """The state an older release left: its migrations applied, the ledger in ``public``."""
    from greenlang_crypto.sqlalchemy.schema import _read

    _exec(url, _LEGACY_LEDGER)
    for version, name in available_migrations():
        if version in versions:
            _exec(
                url,
                _read(name),
                "INSERT INTO public.glc_schema_migrations VALUES "
                f"('{version}', '{name}', '2024-01-02T03:04:05+00')",
            )


def test_a_ledger_in_public_from_an_older_release_is_honoured(
    app_db: tuple[str, str], engine: Engine
) -> None:
    url, sa_url = app_db
    old = ["V011", "V012", "V013"]
    _as_old_release(url, old)
    # `db status` reads the old ledger where it is, and moves nothing.
    assert [m["version"] for m in status(engine)["migrations"]] == old
    assert pg_query(url, "SELECT to_regclass('public.glc_schema_migrations') IS NOT NULL") == [
        (True,)
    ]
    # V013's table, gone: running V013 again would bring it back.
    _exec(url, "DROP TABLE encryption.glc_branch_key_changes")
    up = _cli(sa_url)
    assert up.returncode == 0, up.stderr
    assert up.stdout == f"applied: {', '.join(_versions()[3:])}\n"
    assert "glc_branch_key_changes" not in _library_tables(url)  # V013 was not run again
    assert pg_query(url, "SELECT to_regclass('public.glc_schema_migrations')") == [(None,)]
    rows = pg_query(
        url, "SELECT version, applied_at::text FROM encryption.glc_schema_migrations ORDER BY 1"
    )
    assert [v for v, _ in rows] == _versions()
    assert [a for v, a in rows if v in old] == ["2024-01-02 03:04:05+00"] * 3
    assert _cli(sa_url).stdout == "applied: nothing (up to date)\n"
    # Reverting undoes the versions the old release applied too.
    assert revert_migrations(engine) == _versions()[::-1]
    assert not pg_query(url, "SELECT 1 FROM pg_namespace WHERE nspname = %s", LIBRARY_SCHEMA)


def test_both_ledgers_are_merged_and_reverting_an_old_database_works(
    app_db: tuple[str, str], engine: Engine
) -> None:
    # An old release ran after this one (it recreated the public ledger): the union counts.
    url, _ = app_db
    _as_old_release(url, ["V011"])
    assert apply_migrations(engine) == _versions()[1:]
    _exec(
        url,
        _LEGACY_LEDGER,
        "INSERT INTO public.glc_schema_migrations VALUES ('V011', 'x', now())",
    )
    assert revert_migrations(engine, to_version="V011") == _versions()[1:][::-1]
    assert pg_query(url, "SELECT to_regclass('public.glc_schema_migrations')") == [(None,)]
    ledger = pg_query(url, "SELECT version, name FROM encryption.glc_schema_migrations")
    assert ledger == [("V011", "V011__field_level_encryption.sql")]


def test_two_migrate_runs_at_once_on_an_old_database(app_db: tuple[str, str]) -> None:
    url, sa_url = app_db
    _as_old_release(url, ["V011"])
    argv = [sys.executable, "-m", "greenlang_crypto", "db", "migrate", "--url", sa_url]
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    applied = []
    for out, _ in outs:
        line = out.strip().removeprefix("applied: ")
        if not line.startswith("nothing"):
            applied += line.split(", ")
    assert sorted(applied) == _versions()[1:]  # each version once, by one of them
    ledger = pg_query(url, "SELECT version FROM encryption.glc_schema_migrations ORDER BY 1")
    assert [r[0] for r in ledger] == _versions()
    assert pg_query(url, "SELECT to_regclass('public.glc_schema_migrations')") == [(None,)]


def test_a_ledger_planted_in_public_by_another_role_is_not_trusted(
    app_db: tuple[str, str], engine: Engine
) -> None:
    # A role that may create tables in `public` plants a ledger claiming every migration (and
    # a future one) is applied: the migrations must run all the same.
    url, _ = app_db
    role = f"glc_intruder_{uuid.uuid4().hex[:8]}"
    _exec(url, f"CREATE ROLE {role}", f"GRANT CREATE, USAGE ON SCHEMA public TO {role}")
    try:
        _exec(
            url,
            f"SET ROLE {role}; {_LEGACY_LEDGER}; INSERT INTO public.glc_schema_migrations "
            "SELECT 'V' || lpad(n::text, 3, '0'), 'x', now() FROM generate_series(1, 999) n; "
            "RESET ROLE",
        )
        assert apply_migrations(engine) == _versions()
        assert _library_tables(url) >= library_tables()
        assert pg_query(url, "SELECT count(*) FROM public.glc_schema_migrations") == [(999,)]
        assert status(engine)["migrations"][-1]["version"] == _versions()[-1]
    finally:
        _exec(url, "DROP TABLE IF EXISTS public.glc_schema_migrations", f"DROP OWNED BY {role}")
        _exec(url, f"DROP ROLE {role}")


def test_only_known_versions_are_taken_from_an_old_ledger(
    app_db: tuple[str, str], engine: Engine
) -> None:
    url, _ = app_db
    _as_old_release(url, ["V011"])
    _exec(url, "INSERT INTO public.glc_schema_migrations VALUES ('V999', 'later', now())")
    assert apply_migrations(engine) == _versions()[1:]
    ledger = pg_query(url, "SELECT version FROM encryption.glc_schema_migrations ORDER BY 1")
    assert [r[0] for r in ledger] == _versions()
