"""Blind indexes without a database: definition, normalization, MACs, versions, predicates.

MACs come from the embedded local service; the version checks use a small stand-in service
whose active versions a test can set.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table
from sqlalchemy.dialects import sqlite

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import _index_lookup, blind_index
from greenlang_crypto.sqlalchemy._common import FromRow
from greenlang_crypto.sqlalchemy.blind_index import (
    EMAIL,
    PHONE,
    BlindIndex,
    IndexValue,
    _ascii_plan,
    casefold,
    collapse_whitespace,
    digits,
    nfc,
    nfkc,
    strip,
)
from greenlang_crypto.sqlalchemy.types import EncryptedString

DIALECT = sqlite.dialect()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EncryptionService]:
    d = tmp_path / "keys"
    d.mkdir()
    LocalKeyProvider(d).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=d))
    yield svc
    svc.close()


class _Key:
    def __init__(self, purpose: str, version: int) -> None:
        self._secret = f"{purpose}|{version}".encode()

    def compute(self, value: bytes, length: int = 32) -> bytes:
        return hmac.new(self._secret, value, hashlib.sha256).digest()[:length]


class _Versions:
    """A service whose index key versions are set by the test; it counts key derivations."""

    def __init__(self, *versions: int) -> None:
        self.versions = list(versions)
        self.derived: list[tuple[str, int | None]] = []

    def encrypt(self, *args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("not used")

    decrypt = encrypt

    def active_index_versions(self) -> list[int]:
        return list(self.versions)

    def blind_index_key(self, purpose: str, version: int | None = None) -> _Key:
        self.derived.append((purpose, version))
        return _Key(purpose, version or self.versions[0])


def _table(index: BlindIndex, svc: Any = None, tenant: Any = "t1") -> Table:
    return Table(
        "app.users",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("tenant", String),
        Column("email", EncryptedString(svc or (lambda: None), data_class="pii", tenant_id=tenant)),
        Column("email_bidx", index),
    )


# -- normalizers ---------------------------------------------------------------------------


def test_builtin_normalizers() -> None:
    assert strip("  a b \n") == "a b"
    assert collapse_whitespace(" a \t b\n\nc ") == "a b c"
    assert nfc("e\u0301") == "\u00e9"
    assert nfkc("\uff21\ufb01") == "Afi"
    assert nfc("\ufb01") == "\ufb01"
    assert casefold("Stra\u00dfe") == casefold("STRASSE") == "strasse"
    assert digits(" +1 (555) 010-0200") == "+15550100200"
    assert digits("0044 20 7946 0000") == "00442079460000"
    assert digits("\u0661\u0662") == ""  # non-ASCII digits are not kept
    assert (strip, nfc, casefold) == EMAIL
    assert (digits,) == PHONE


def test_the_ascii_plan_replaces_builtins_and_gives_up_on_others() -> None:
    assert _ascii_plan(EMAIL) == (str.strip, str.lower)
    assert _ascii_plan((nfkc, collapse_whitespace, digits)) == (collapse_whitespace, digits)
    assert _ascii_plan(()) == ()
    assert _ascii_plan((strip, str.upper)) is None


def test_normalize_applies_the_steps_in_order() -> None:
    index = BlindIndex("email", normalizer=(strip, casefold))
    assert index.normalize("  Ab ") == b"ab"
    assert index.normalize(b"  Raw ") == b"  Raw "
    assert index.normalize(bytearray(b"x")) == b"x"
    assert BlindIndex("email", normalizer=casefold).normalizer == (casefold,)
    assert BlindIndex("email").normalize(" A ") == b" A "
    with pytest.raises(TypeError, match="str or bytes"):
        index.normalize(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="surrogate"):
        index.normalize("\ud800")


def test_values_equal_compares_normalized_values() -> None:
    index = BlindIndex("email", normalizer=EMAIL)
    assert index.values_equal(" A@Example.com", "a@example.com")
    assert not index.values_equal("a@example.com", "b@example.com")
    assert not index.values_equal(None, None)


# -- definition ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 33])
def test_length_is_bounded(length: int) -> None:
    with pytest.raises(InvalidArgumentError, match="length"):
        BlindIndex("email", length=length)


def test_a_blind_index_is_what_the_column_types_look_for() -> None:
    assert issubclass(BlindIndex, _index_lookup.IndexType)
    # Still importable from here, where it has always been.
    assert blind_index.index_for_source is _index_lookup.index_for_source
    index = BlindIndex("email")
    table = _table(index)
    assert blind_index.index_for_source(table.c.email) is table.c.email_bidx


def test_the_source_must_be_an_encrypted_column_beside_the_index() -> None:
    index = BlindIndex("email")
    with pytest.raises(InvalidArgumentError, match="not attached"):
        _ = index.source_type
    table = _table(index)
    assert index.source_type is table.c.email.type
    missing = BlindIndex("nope")
    Table("t_missing", MetaData(), Column("id", Integer, primary_key=True), Column("i", missing))
    with pytest.raises(InvalidArgumentError, match="no column 'nope'"):
        _ = missing.source_type
    plain = BlindIndex("name")
    Table("t_plain", MetaData(), Column("name", String), Column("i", plain))
    with pytest.raises(InvalidArgumentError, match="not an encrypted column"):
        _ = plain.source_type


def test_purposes_name_the_table_and_column_and_the_tenant_when_asked() -> None:
    with pytest.raises(InvalidArgumentError, match="not attached"):
        BlindIndex("email").purpose_for()
    assert BlindIndex("email", purpose="mine").purpose_for() == "mine"
    shared = BlindIndex("email")
    _table(shared)
    assert shared.purpose_for() == "app.users.email"
    assert shared.purpose_for("t9") == "app.users.email"
    per_tenant = BlindIndex("email", per_tenant=True)
    _table(per_tenant, tenant=lambda: "t4")
    assert per_tenant.purpose_for() == "app.users.email|tenant=t4"
    assert per_tenant.purpose_for("t9") == "app.users.email|tenant=t9"
    row_tenant = BlindIndex("email", per_tenant=True)
    _table(row_tenant, tenant=FromRow("tenant"))
    with pytest.raises(InvalidArgumentError, match="pass tenant_id"):
        row_tenant.purpose_for()


# -- MACs and versions ---------------------------------------------------------------------


def test_an_index_value_is_the_version_then_the_truncated_mac(service: EncryptionService) -> None:
    index = BlindIndex("email", normalizer=EMAIL, length=8)
    _table(index, service)
    value = index.compute(" A@Example.com")
    assert isinstance(value, IndexValue) and len(value) == 9
    assert value[0] == service.active_index_versions()[0]
    assert value == index.compute("a@example.com")
    assert value != index.compute("b@example.com")
    assert index.matches(value, "A@EXAMPLE.COM")
    assert not index.matches(value, "b@example.com")
    assert not index.matches(b"", "a@example.com")


def test_short_indexes_are_a_prefix_of_the_shortest_mac(service: EncryptionService) -> None:
    short, longer = BlindIndex("email", length=2), BlindIndex("email", length=4)
    _table(short, service)
    _table(longer, service)
    assert short.compute("x")[1:] == longer.compute("x")[1:3]


def test_many_values_index_like_one_by_one(service: EncryptionService) -> None:
    index = BlindIndex("email", normalizer=EMAIL)
    _table(index, service)
    values: list[str | bytes] = ["A@x.org", " b@x.org ", "J\u00f6rg@x.org", b"raw", ""]
    assert index.compute_many(values) == [index.compute(v) for v in values]
    assert index.compute_many([]) == []


def test_per_tenant_indexes_differ_between_tenants(service: EncryptionService) -> None:
    index = BlindIndex("email", per_tenant=True)
    _table(index, service, tenant=FromRow("tenant"))
    values: list[str | bytes] = ["a", "a", "b"]
    tenants: list[str | None] = ["t1", "t2", "t1"]
    out = index.compute_many(values, tenants)
    assert out == [index.compute(v, tenant_id=t) for v, t in zip(values, tenants, strict=True)]
    assert out[0] != out[1]


def test_a_lookup_matches_every_active_version() -> None:
    svc = _Versions(2, 1)
    index = BlindIndex("email")
    _table(index, svc)
    candidates = index.candidates("a")
    assert [c[0] for c in candidates] == [2, 1]
    assert index.compute("a") == candidates[0]
    assert index.matches(candidates[1], "a")
    # A version no longer active no longer matches.
    svc.versions = [2]
    index.refresh()
    assert not index.matches(candidates[1], "a")
    assert index.matches(candidates[0], "a")


def test_versions_and_keys_are_cached_until_refresh() -> None:
    svc = _Versions(1)
    index = BlindIndex("email", refresh_seconds=3600)
    _table(index, svc)
    index.compute("a")
    index.compute("b")
    assert svc.derived == [("app.users.email", 1)]
    svc.versions = [3, 1]
    assert index.active_versions() == [1]
    index.refresh()
    assert index.active_versions() == [3, 1]


@pytest.mark.parametrize("bad", [0, 256])
def test_versions_must_fit_one_byte(bad: int) -> None:
    index = BlindIndex("email")
    _table(index, _Versions(bad))
    with pytest.raises(InvalidArgumentError, match=r"1\.\.255"):
        index.active_versions()


# -- SQL -----------------------------------------------------------------------------------


def _sql(expr: Any) -> str:
    return str(expr.compile(dialect=DIALECT))


def test_where_is_an_equality_for_one_version_and_in_for_several() -> None:
    svc = _Versions(1)
    index = BlindIndex("email")
    table = _table(index, svc)
    col = table.c.email_bidx
    assert _sql(index.where(col, "a")) == '"app.users".email_bidx = ?'
    assert _sql(index.where(col, None)) == '"app.users".email_bidx IS NULL'
    svc.versions = [2, 1]
    index.refresh()
    assert _sql(index.where(col, "a")) == '"app.users".email_bidx IN (?, ?)'
    params = index.where(col, "a").compile(dialect=DIALECT).params
    assert sorted(params.values()) == sorted(index.candidates("a"))


def test_comparing_the_index_column() -> None:
    index = BlindIndex("email")
    table = _table(index, _Versions(1))
    col = table.c.email_bidx
    stored = index.compute("a")
    compiled = (col == stored).compile(dialect=DIALECT)
    assert str(compiled) == '"app.users".email_bidx = ?'
    assert list(compiled.params.values()) == [bytes(stored)]
    other = Column("copy", LargeBinary)
    assert _sql(col == other) == '"app.users".email_bidx = copy'
    assert list((col == "a").compile(dialect=DIALECT).params.values()) == [bytes(stored)]


def test_bound_values_are_macs_unless_already_computed() -> None:
    index = BlindIndex("email", normalizer=EMAIL)
    _table(index, _Versions(1))
    stored = index.compute("a@example.com")
    assert index.process_bind_param(None, DIALECT) is None
    assert index.process_bind_param(stored, DIALECT) == stored
    assert index.process_bind_param(" A@example.com", DIALECT) == stored
    assert index.process_result_value(None, DIALECT) is None
    assert index.process_result_value(memoryview(stored), DIALECT) == stored


# -- asyncio -------------------------------------------------------------------------------


def test_keys_cached_says_when_a_lookup_needs_no_key_read(service: EncryptionService) -> None:
    table = Table(
        "accounts",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("tenant", String(9)),
        Column("email", EncryptedString(service, data_class="pii", tenant_id=FromRow("tenant"))),
        Column("email_bidx", BlindIndex("email", per_tenant=True)),
    )
    index = table.c.email_bidx.type
    assert not index.keys_cached("t1")
    index.compute("a@x.org", tenant_id="t1")
    assert index.keys_cached("t1")
    assert not index.keys_cached("t2")  # another tenant, another key
    with pytest.raises(InvalidArgumentError, match="matches"):
        index.keys_cached()
    index.refresh()
    assert not index.keys_cached("t1")


def test_lookup_refuses_an_async_session_and_names_alookup(service: EncryptionService) -> None:
    import asyncio
    import inspect

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import registry

    from greenlang_crypto.sqlalchemy import alookup, lookup

    table = Table(
        "lookup_accounts",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("email", EncryptedString(service, data_class="pii", tenant_id="t1")),
        Column("email_bidx", BlindIndex("email")),
    )

    class Account:
        email: Any

    registry().map_imperatively(Account, table)

    # Building an engine and a session connects to nothing.
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    session = AsyncSession(engine)
    with pytest.raises(InvalidArgumentError, match=r"await alookup\(session"):
        lookup(session, Account.email, "a@x.org")  # type: ignore[arg-type]
    assert inspect.iscoroutinefunction(alookup)
    asyncio.run(engine.dispose())


def test_another_service_behind_the_same_column_gets_its_own_keys(tmp_path: Path) -> None:
    # Two keyrings at the same epoch number (a test's service, one rebuilt with another
    # configuration): the column must not index with the keys derived from the first.
    made = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        LocalKeyProvider(d).create_master_key()
        made.append(EncryptionService(EncryptionServiceConfig(data_dir=d)))
    a, b = made
    current = [a]
    index = BlindIndex(
        "email", purpose="users.email", service=lambda: current[0], refresh_seconds=3600
    )
    try:
        by_a = index.compute("x@example.com")
        b.blind_index_key("warm-up")  # its first index key: the same epoch as a's now
        assert a.keyring_epoch == b.keyring_epoch
        current[0] = b
        by_b = index.compute("x@example.com")
        assert by_a != by_b
        assert by_b == BlindIndex("email", purpose="users.email", service=b).compute(
            "x@example.com"
        )
        assert index.keys_cached() and not index.matches(by_a, "x@example.com")
    finally:
        a.close()
        b.close()
