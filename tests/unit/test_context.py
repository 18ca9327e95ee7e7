"""EncryptionContext: validation, canonical encoding, equality and the mapping constructor."""

from __future__ import annotations

import hashlib
from types import MappingProxyType
from typing import Any

import pytest

from greenlang_crypto.context import RESERVED_KEYS, EncryptionContext
from greenlang_crypto.exceptions import InvalidContextError


def test_fields_and_as_dict() -> None:
    ctx = EncryptionContext("t1", "pii", {"purpose": "billing"})
    assert (ctx.tenant_id, ctx.data_class) == ("t1", "pii")
    assert ctx.as_dict() == {"tenant_id": "t1", "data_class": "pii", "purpose": "billing"}
    # as_dict is a fresh dict each time: changing it cannot change the context.
    ctx.as_dict()["tenant_id"] = "t2"
    assert ctx.as_dict()["tenant_id"] == "t1"


@pytest.mark.parametrize(
    ("tenant_id", "data_class"),
    [("", "pii"), ("t1", ""), (None, "pii"), ("t1", None), (1, "pii"), ("t1", b"pii")],
)
def test_required_fields_must_be_non_empty_str(tenant_id: Any, data_class: Any) -> None:
    with pytest.raises(InvalidContextError):
        EncryptionContext(tenant_id, data_class)


@pytest.mark.parametrize("reserved", sorted(RESERVED_KEYS))
def test_extra_may_not_set_reserved_keys(reserved: str) -> None:
    with pytest.raises(InvalidContextError, match="reserved"):
        EncryptionContext("t1", "pii", {reserved: "x"})


@pytest.mark.parametrize(
    "extra",
    [
        ["purpose", "x"],
        "purpose=x",
        {"purpose": 1},
        {1: "x"},
        {"purpose": "\ud800"},  # a lone surrogate has no UTF-8 encoding
        {"purpose": b"x"},
    ],
)
def test_bad_extra_is_a_typed_error(extra: Any) -> None:
    with pytest.raises(InvalidContextError):
        EncryptionContext("t1", "pii", extra)


def test_lone_surrogate_in_a_required_field_is_refused() -> None:
    with pytest.raises(InvalidContextError):
        EncryptionContext("t\udfff", "pii")


def test_extra_is_copied_and_read_only() -> None:
    source = {"purpose": "billing"}
    ctx = EncryptionContext("t1", "pii", source)
    source["purpose"] = "changed"
    source["more"] = "x"
    assert dict(ctx.extra) == {"purpose": "billing"}
    assert isinstance(ctx.extra, MappingProxyType)
    with pytest.raises(TypeError):
        ctx.extra["purpose"] = "x"  # type: ignore[index]


def test_frozen() -> None:
    ctx = EncryptionContext("t1", "pii")
    with pytest.raises(AttributeError):
        ctx.tenant_id = "t2"  # type: ignore[misc]


def test_key_order_does_not_matter_but_every_byte_does() -> None:
    a = EncryptionContext("t1", "pii", {"a": "1", "b": "2"})
    b = EncryptionContext("t1", "pii", {"b": "2", "a": "1"})
    assert a == b and hash(a) == hash(b)
    assert a.canonical == b.canonical and a.digest == b.digest
    # Case, Unicode normalization and trailing spaces all make a different context.
    for other in (
        EncryptionContext("T1", "pii", {"a": "1", "b": "2"}),
        EncryptionContext("t1", "pii", {"a": "1", "b": "2 "}),
        EncryptionContext("t1", "pii", {"a": "1", "b": "2", "c": ""}),
        EncryptionContext("t1", "pii", {"a": "1"}),
        EncryptionContext("t1", "secret", {"a": "1", "b": "2"}),
    ):
        assert other != a
        assert other.canonical != a.canonical
    nfc = EncryptionContext("caf\u00e9", "pii")
    nfd = EncryptionContext("cafe\u0301", "pii")
    assert nfc != nfd


def test_length_prefixing_keeps_boundaries_apart() -> None:
    # Concatenation alone would make these two encode the same bytes.
    a = EncryptionContext("t1", "pii", {"ab": "c"})
    b = EncryptionContext("t1", "pii", {"a": "bc"})
    assert a.canonical != b.canonical


def test_digest_is_sha256_of_the_canonical_encoding() -> None:
    ctx = EncryptionContext("t1", "pii", {"purpose": "x"})
    assert ctx.digest == hashlib.sha256(ctx.canonical).digest()
    assert len(ctx.digest) == 32


def test_not_equal_to_other_types() -> None:
    ctx = EncryptionContext("t1", "pii")
    assert ctx != ctx.as_dict()
    assert ctx.__eq__("t1") is NotImplemented
    assert {ctx: 1}[EncryptionContext("t1", "pii")] == 1


def test_repr_shows_the_pairs_not_the_encoding() -> None:
    ctx = EncryptionContext("t1", "pii", {"purpose": "x"})
    text = repr(ctx)
    assert "t1" in text and "pii" in text
    assert "_canonical" not in text and "_digest" not in text
    assert ctx.digest.hex() not in text


def test_from_mapping() -> None:
    ctx = EncryptionContext.from_mapping({"tenant_id": "t1", "data_class": "pii", "purpose": "x"})
    assert ctx == EncryptionContext("t1", "pii", {"purpose": "x"})
    assert EncryptionContext.from_mapping(ctx.as_dict()) == ctx


@pytest.mark.parametrize(
    "mapping",
    [
        {"tenant_id": "t1"},
        {"data_class": "pii"},
        {},
        [("tenant_id", "t1"), ("data_class", "pii")],
        "tenant_id=t1",
        {"tenant_id": "t1", "data_class": 3},
    ],
)
def test_from_mapping_rejects_incomplete_or_wrong_input(mapping: Any) -> None:
    with pytest.raises(InvalidContextError):
        EncryptionContext.from_mapping(mapping)


def test_invalid_context_error_is_a_value_error() -> None:
    # Callers that guard input with `except ValueError` still catch a bad context.
    with pytest.raises(ValueError):
        EncryptionContext("", "pii")
