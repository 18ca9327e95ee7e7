"""The lookup of the blind-index column over an encrypted column (no database).

The column types find their index through this module only, so it must recognise every
blind index, and nothing that merely looks like one.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, literal_column
from sqlalchemy.types import TypeDecorator

from greenlang_crypto.sqlalchemy import _index_lookup
from greenlang_crypto.sqlalchemy._index_lookup import IndexType, index_for_source
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex


class _OtherIndex(IndexType):
    """An index type that is not a BlindIndex: the lookup asks for IndexType, nothing more."""

    impl = LargeBinary
    cache_ok = True

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source


class _LookAlike(TypeDecorator[Any]):
    """Has a ``source`` like an index, but is not one."""

    impl = LargeBinary
    cache_ok = True

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source


def _table(name: str, *extra: Column[Any]) -> Table:
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("email", String),
        Column("phone", String),
        *extra,
    )


def test_finds_the_index_declared_over_the_column() -> None:
    table = _table("t_found", Column("email_bidx", BlindIndex("email")))
    assert index_for_source(table.c.email) is table.c.email_bidx
    # Asked again, the cached answer is the same column.
    assert index_for_source(table.c.email) is table.c.email_bidx


def test_an_index_over_another_column_is_not_this_columns_index() -> None:
    table = _table("t_other", Column("phone_bidx", BlindIndex("phone")))
    assert index_for_source(table.c.email) is None
    assert index_for_source(table.c.phone) is table.c.phone_bidx


def test_any_index_type_is_found_and_a_look_alike_is_not() -> None:
    table = _table(
        "t_kinds",
        Column("email_fake", _LookAlike("email")),
        Column("phone_other", _OtherIndex("phone")),
    )
    assert index_for_source(table.c.email) is None
    assert index_for_source(table.c.phone) is table.c.phone_other


def test_expressions_without_a_table_column_have_no_index() -> None:
    assert index_for_source(literal_column("email")) is None
    assert index_for_source(object()) is None


def test_an_index_added_after_a_miss_is_found() -> None:
    table = _table("t_late")
    assert index_for_source(table.c.email) is None
    table.append_column(Column("email_bidx", BlindIndex("email")))
    assert index_for_source(table.c.email) is table.c.email_bidx


def test_the_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    cache: dict[tuple[Any, str], Any] = {(object(), f"c{i}"): None for i in range(4097)}
    monkeypatch.setattr(_index_lookup, "_index_columns", cache)
    table = _table("t_bounded", Column("email_bidx", BlindIndex("email")))
    assert index_for_source(table.c.email) is table.c.email_bidx
    assert list(cache) == [(table, "email")]


def test_the_base_has_no_predicate_of_its_own() -> None:
    with pytest.raises(NotImplementedError):
        _OtherIndex("email").where(literal_column("email"), "x")
