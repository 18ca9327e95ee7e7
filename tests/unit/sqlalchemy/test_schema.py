"""The packaged migrations in process: found in order with their down scripts, the example
columns kept apart from them, and refused on a database that is not PostgreSQL before anything
is written (applying them: ``tests/integration/sqlalchemy/test_v011.py`` and
``test_migrate_scope.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Engine

from greenlang_crypto import cli
from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.sql import EXAMPLE_COLUMNS
from greenlang_crypto.sqlalchemy.schema import (
    _LEGACY_RECORDS,
    _NAME,
    _RECORDS,
    _read,
    apply_example_columns,
    apply_migrations,
    available_migrations,
    revert_example_columns,
    revert_migrations,
    status,
)


def test_every_packaged_up_migration_is_found_in_version_order() -> None:
    found = available_migrations()
    packaged = sorted(
        entry.name
        for entry in resources.files("greenlang_crypto.sql").iterdir()
        if entry.name.startswith("V") and entry.name.endswith(".sql")
        and not entry.name.endswith(".down.sql")
    )  # fmt: skip
    assert [name for _, name in found] == packaged
    assert [v for v, _ in found] == sorted(v for v, _ in found)
    assert ("V011", "V011__field_level_encryption.sql") in found
    assert all(not name.endswith(".down.sql") for _, name in found)


def test_each_migration_has_a_down_script_and_reads_as_sql() -> None:
    for _, name in available_migrations():
        assert _read(name).strip()
        assert _read(name.replace(".sql", ".down.sql")).strip()


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("V011__field_level_encryption.sql", "V011"),
        ("V011__field_level_encryption.down.sql", None),
        ("V11__short.sql", None),
        ("V011__Upper.sql", None),
        ("notes.sql", None),
    ],
)
def test_only_up_migration_file_names_match(name: str, version: str | None) -> None:
    match = _NAME.match(name)
    assert (match.group(1) if match else None) == version


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    yield engine
    engine.dispose()


def test_migrations_refuse_a_database_that_is_not_postgresql(sqlite_engine: Engine) -> None:
    for call in (
        apply_migrations,
        revert_migrations,
        status,
        apply_example_columns,
        revert_example_columns,
    ):
        with pytest.raises(ConfigurationError, match="PostgreSQL"):
            call(sqlite_engine)
    assert inspect(sqlite_engine).get_table_names() == []  # nothing was created


def test_the_ledger_lives_in_the_library_schema() -> None:
    assert _RECORDS == "encryption.glc_schema_migrations"
    assert _LEGACY_RECORDS == "public.glc_schema_migrations"


def test_the_example_is_packaged_with_its_revert_but_is_no_migration() -> None:
    names = {name for _, name in available_migrations()}
    assert EXAMPLE_COLUMNS not in names
    assert not any("example" in name for name in names)
    up, down = _read(EXAMPLE_COLUMNS), _read(EXAMPLE_COLUMNS.replace(".sql", ".down.sql"))
    for table in ("users", "api_keys", "security.login_attempts"):
        assert f"'{table}'" in up and f"'{table}'" in down
    assert "ADD COLUMN IF NOT EXISTS" in up and "DROP COLUMN IF EXISTS" in down


def test_no_migration_names_an_application_table() -> None:
    # The tables the example alters are the application's; the migrations must leave them.
    for _, name in available_migrations():
        for script in (_read(name), _read(name.replace(".sql", ".down.sql"))):
            for table in ("'users'", "'api_keys'", "login_attempts", "_bidx'"):
                assert table not in script, (name, table)


@pytest.mark.parametrize("down", [False, True])
def test_the_cli_takes_example_columns_and_refuses_sqlite(
    down: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["db", "migrate", "--url", "sqlite://", "--example-columns"]
    assert cli.main([*argv, "--down"] if down else argv) == 2
    assert "the SQL migrations are for PostgreSQL" in capsys.readouterr().err


def test_reverting_down_to_the_newest_version_touches_no_database(sqlite_engine: Engine) -> None:
    newest = available_migrations()[-1][0]
    assert revert_migrations(sqlite_engine, to_version=newest) == []
