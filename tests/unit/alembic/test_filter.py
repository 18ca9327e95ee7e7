"""The Alembic filters (:mod:`greenlang_crypto.alembic._filter`) on real SQLAlchemy objects.

Alembic itself runs them in ``tests/integration/alembic/test_alembic_check.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Index, Integer, MetaData, Table, Text, UniqueConstraint

from greenlang_crypto.alembic import LibraryObjectFilter, include_name, include_object
from greenlang_crypto.exceptions import InvalidArgumentError


def _tables() -> tuple[Table, Table]:
    md = MetaData()
    deks = Table(
        "glc_deks",
        md,
        Column("dek_id", Integer, primary_key=True),
        Column("key_version", Integer),
        schema="encryption",
    )
    Index("glc_deks_version", deks.c.key_version)
    users = Table(
        "users",
        md,
        Column("id", Integer, primary_key=True),
        Column("email_bidx", Text),
        Column("dek", Integer, ForeignKey(deks.c.dek_id)),
        UniqueConstraint("email_bidx", name="users_email_bidx_key"),
    )
    Index("glc_users_email_bidx", users.c.email_bidx)
    return deks, users


def _parts(table: Table) -> list[tuple[Any, Any, str]]:
    """(object, name, type_) as Alembic passes them, for a table and everything in it."""
    out: list[tuple[Any, Any, str]] = [(table, table.name, "table")]
    out += [(c, c.name, "column") for c in table.columns]
    out += [(i, i.name, "index") for i in table.indexes]
    for c in table.constraints:
        if isinstance(c, UniqueConstraint):
            out.append((c, c.name, "unique_constraint"))
    out += [(fk, fk.name, "foreign_key_constraint") for fk in table.foreign_key_constraints]
    return out


@pytest.mark.parametrize("reflected", [True, False])
def test_everything_in_the_encryption_schema_is_excluded(reflected: bool) -> None:
    deks, _ = _tables()
    parts = _parts(deks)
    assert {t for _, _, t in parts} >= {"table", "column", "index"}
    for obj, name, type_ in parts:
        assert include_object(obj, name, type_, reflected, None) is False, name
        assert include_object(obj, name, type_, reflected, obj) is False, name


def test_the_applications_objects_are_included() -> None:
    _, users = _tables()
    for obj, name, type_ in _parts(users):
        if name == "glc_users_email_bidx":
            continue
        for reflected in (True, False):
            for compare_to in (None, obj):
                assert include_object(obj, name, type_, reflected, compare_to), (name, type_)


def test_a_reflected_glc_object_without_a_model_counterpart_is_excluded() -> None:
    _, users = _tables()
    index = next(i for i in users.indexes if i.name == "glc_users_email_bidx")
    assert include_object(index, index.name, "index", True, None) is False
    # Declared by the project's metadata: Alembic compares or creates it as usual.
    assert include_object(index, index.name, "index", True, index) is True
    assert include_object(index, index.name, "index", False, None) is True
    # A legacy table in public, e.g. the ledger an older release kept there.
    legacy = Table("glc_schema_migrations", MetaData(), Column("version", Text))
    assert include_object(legacy, legacy.name, "table", True, None) is False
    assert include_object(legacy, legacy.name, "table", False, None) is True
    # Columns are the application's data, whatever their name.
    column = Column("glc_note", Text)
    Table("notes", MetaData(), column)
    assert include_object(column, "glc_note", "column", True, None) is True


def test_unnamed_and_unknown_objects_are_included() -> None:
    _, users = _tables()
    assert include_object(users, None, "unique_constraint", True, None) is True
    assert include_object(object(), "glc_x", "something_new", False, None) is True


def test_include_name_skips_the_library_schema() -> None:
    assert include_name("encryption", "schema", {}) is False
    assert include_name(None, "schema", {}) is True
    assert include_name("public", "schema", {}) is True
    assert include_name("glc_deks", "table", {"schema_name": "encryption"}) is False
    assert include_name("users", "table", {"schema_name": None}) is True
    # Legacy names outside the schema are left to include_object, which sees the metadata.
    assert include_name("glc_schema_migrations", "table", {"schema_name": None}) is True


def test_other_schemas_on_request() -> None:
    f = LibraryObjectFilter(("encryption", "keys"))
    keys_table = Table("glc_deks", MetaData(), Column("id", Integer), schema="keys")
    assert f.include_object(keys_table, "glc_deks", "table", True, keys_table) is False
    assert include_object(keys_table, "glc_deks", "table", True, keys_table) is True
    assert f.include_name("keys", "schema", {}) is False
    assert repr(f) == "LibraryObjectFilter(('encryption', 'keys'))"
    with pytest.raises(InvalidArgumentError, match="schema names"):
        LibraryObjectFilter(())
    with pytest.raises(InvalidArgumentError, match="schema names"):
        LibraryObjectFilter([""])
