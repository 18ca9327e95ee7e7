"""The packaged SQL (:mod:`greenlang_crypto.sql`): the migrations stay in the schema
``encryption``, the application columns are an example apart from them, and the ``columns``
group still reads them."""

from __future__ import annotations

import re
import zlib

import pytest

from greenlang_crypto import sql

#: The object a DDL/DML statement targets (the first name after the keyword).
_TARGET = re.compile(
    r"\b(?:CREATE TABLE IF NOT EXISTS|ALTER TABLE|DROP TABLE IF EXISTS|DROP INDEX IF EXISTS|"
    r"INSERT INTO|CREATE SCHEMA IF NOT EXISTS)\s+([a-z_.]+)"
)
_INDEX_ON = re.compile(r"\bCREATE INDEX IF NOT EXISTS [a-z0-9_]+\s+ON\s+([a-z_.]+)")


def test_every_migration_statement_targets_the_library_schema() -> None:
    checked = 0
    for group, statement in sql._migrations():
        if statement.startswith("DO"):
            # The blocks that move an old release's tables out of `public` into the schema.
            assert "SET SCHEMA encryption" in statement, statement
            continue
        if statement.startswith("CREATE EXTENSION"):
            assert statement == "CREATE EXTENSION IF NOT EXISTS pgcrypto"
            continue
        targets = _TARGET.findall(statement) + _INDEX_ON.findall(statement)
        assert targets, (group, statement)
        for target in targets:
            assert target == "encryption" or target.startswith("encryption."), statement
            checked += 1
    assert checked > 20


def test_the_columns_group_is_the_example_only() -> None:
    columns = sql.statements("columns", "postgresql")
    assert len(columns) == 1 and columns[0].startswith("DO")
    assert "('users', 'email')" in columns[0]
    assert not [s for g, s in sql._migrations() if g == "columns"]
    assert sql.statements("columns", "sqlite") == []  # PL/pgSQL: PostgreSQL only
    assert sql.statements("columns", "postgresql", schema="other") == columns


def test_the_example_is_no_migration_file() -> None:
    assert sql.EXAMPLE_COLUMNS not in sql.migration_files()
    assert all(re.fullmatch(r"V\d{3}__[a-z0-9_]+\.sql", n) for n in sql.migration_files())
    marker = zlib.crc32("\n".join(sql.migration_files()).encode()) & 0x7FFFFFFF
    assert sql.schema_marker() == marker


def test_library_tables_and_indexes_come_from_the_migrations() -> None:
    tables = sql.library_tables()
    assert {"glc_key_versions", "glc_deks", "glc_audit", "glc_job_ranges"} <= tables
    assert {"glc_instances", "glc_branch_keys", sql.LEDGER_TABLE} <= tables
    assert all(t.startswith("glc_") for t in tables)
    assert {"glc_deks_version", "glc_audit_time"} <= sql.library_indexes()
    assert not [i for i in sql.library_indexes() if i.endswith("_bidx")]  # the example's


@pytest.mark.parametrize("group", sql.GROUPS)
def test_every_group_has_statements(group: str) -> None:
    assert sql.statements(group, "postgresql")
