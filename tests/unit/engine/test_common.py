from __future__ import annotations

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.engine._common import (
    REFERENCES,
    KeyReference,
    as_bytes,
    as_context,
    check_aad,
    check_reference,
)
from greenlang_crypto.exceptions import InvalidArgumentError, InvalidContextError


def test_key_references_equal_their_strings() -> None:
    assert KeyReference.STORED == "stored"
    assert KeyReference("inline") is KeyReference.INLINE
    assert str(KeyReference.BRANCH) == "branch"
    assert REFERENCES == ("stored", "inline", "branch")
    assert {KeyReference.STORED: 1}["stored"] == 1


def test_check_reference_returns_a_plain_string() -> None:
    out = check_reference(KeyReference.BRANCH)
    assert out == "branch" and type(out) is str
    with pytest.raises(InvalidArgumentError):
        check_reference("nowhere")


def test_arguments_are_checked_and_copied() -> None:
    ctx = EncryptionContext(tenant_id="t", data_class="pii")
    assert as_context(ctx) is ctx
    assert as_context({"tenant_id": "t", "data_class": "pii"}) == ctx
    with pytest.raises(InvalidContextError):
        as_context("t")  # type: ignore[arg-type]
    buf = bytearray(b"ab")
    copied = as_bytes(buf, "plaintext")
    buf[0] = 0
    assert copied == b"ab"
    with pytest.raises(TypeError, match="not None"):
        as_bytes(None, "plaintext")
    with pytest.raises(TypeError):
        check_aad("row")  # type: ignore[arg-type]
    assert check_aad(None) is None
