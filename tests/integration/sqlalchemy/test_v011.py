"""The migrations: applied idempotently with and without the PII tables, then reverted; they
leave the application's tables alone (the scope itself: ``test_migrate_scope.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from greenlang_crypto.sqlalchemy.schema import (
    apply_migrations,
    available_migrations,
    revert_migrations,
)
from tests.conftest import pg_private_database
from tests.integration.sqlalchemy._jobs import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_db() -> Iterator[tuple[Engine, str]]:
    """A database of its own: V011 touches fixed names (users, encryption.*)."""
    with pg_private_database("glc_v011", sqlalchemy_url=True) as url:
        eng = create_engine(url)
        try:
            yield eng, url
        finally:
            eng.dispose()


def _columns(engine: Engine, schema: str, table: str) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = :s AND table_name = :t"
                ),
                {"s": schema, "t": table},
            ).scalars()
        )


def _versions() -> list[str]:
    return [v for v, _ in available_migrations()]


def test_packaged() -> None:
    assert ("V011", "V011__field_level_encryption.sql") in available_migrations()


@pytest.mark.parametrize("with_pii_tables", [False, True])
def test_apply_twice_then_down(fresh_db: tuple[Engine, str], with_pii_tables: bool) -> None:
    engine, _ = fresh_db
    if with_pii_tables:
        with engine.begin() as conn:
            conn.execute(text("CREATE SCHEMA security"))
            conn.execute(
                text(
                    "CREATE TABLE security.login_attempts (id bigint PRIMARY KEY, ip_address text)"
                )
            )
            conn.execute(text("CREATE TABLE users (id bigint PRIMARY KEY, email text, phone text)"))
            conn.execute(text("CREATE TABLE api_keys (id bigint PRIMARY KEY, key_value text)"))
    # V012 (the fleet keyring tables), V013 (branch keys), V014 (instance fences) and any
    # later migration follow V011.
    assert _versions()[:4] == ["V011", "V012", "V013", "V014"]
    assert apply_migrations(engine) == _versions()
    assert apply_migrations(engine) == []  # recorded: not applied again
    with engine.begin() as conn:  # the script itself is idempotent as well
        conn.execute(text("DELETE FROM encryption.glc_schema_migrations"))
    assert apply_migrations(engine) == _versions()
    assert not _columns(engine, "public", "glc_schema_migrations")
    for table in (
        "glc_key_versions",
        "glc_keyring",
        "glc_deks",
        "glc_index_keys",
        "glc_audit",
        "glc_audit_meta",
        "glc_job_ranges",
        "glc_quarantine",
    ):
        assert _columns(engine, "encryption", table), table
    assert {"version", "state", "provider", "wrapping_key_id", "created_at", "rotated_at"} == (
        _columns(engine, "encryption", "glc_key_versions")
    )
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'")
            ).scalar()
            == 1
        )
    if with_pii_tables:  # the application's tables are the application's
        assert _columns(engine, "public", "users") == {"id", "email", "phone"}
        assert _columns(engine, "security", "login_attempts") == {"id", "ip_address"}
        assert _columns(engine, "public", "api_keys") == {"id", "key_value"}
    with engine.connect() as conn:
        assert not conn.execute(
            text("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'glc_%_bidx'")
        ).scalar()
    assert revert_migrations(engine) == _versions()[::-1]
    assert revert_migrations(engine) == []
    assert not _columns(engine, "encryption", "glc_deks")
    with engine.connect() as conn:  # nothing left, the ledger neither
        assert not conn.execute(
            text("SELECT count(*) FROM pg_namespace WHERE nspname = 'encryption'")
        ).scalar()
    if with_pii_tables:
        assert _columns(engine, "public", "users") == {"id", "email", "phone"}
        assert _columns(engine, "security", "login_attempts") == {"id", "ip_address"}


def test_cli_migrate_up_and_down(fresh_db: tuple[Engine, str], tmp_path: object) -> None:
    _, url = fresh_db
    base = ["python", "-m", "greenlang_crypto", "db", "migrate", "--url", url]
    import sys

    base[0] = sys.executable
    up = run_cli(base)
    assert up.returncode == 0 and f"applied: {', '.join(_versions())}\n" == up.stdout, up.stderr
    assert "up to date" in run_cli(base).stdout
    down = run_cli([*base, "--down"])
    assert down.returncode == 0 and f"reverted: {', '.join(_versions()[::-1])}\n" == down.stdout
    assert run_cli([*base, "--down"]).stdout == "reverted: nothing\n"
