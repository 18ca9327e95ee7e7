from __future__ import annotations

import io

import pytest

from greenlang_crypto import parse_envelope
from greenlang_crypto._core import parse_stream_header
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.service import EncryptionService

from .conftest import CTX


def test_a_stream_round_trips_and_is_counted_once(svc: EncryptionService) -> None:
    data = b"s" * 100_000
    sealed = io.BytesIO()
    assert svc.encrypt_stream(io.BytesIO(data), sealed, CTX, b"obj") == len(data)
    out = io.BytesIO()
    assert svc.decrypt_stream(io.BytesIO(sealed.getvalue()), out, CTX, b"obj") == len(data)
    assert out.getvalue() == data
    counts = svc.operation_counts()
    assert counts["encrypt"]["pii"] == (1, len(data))
    assert counts["decrypt"]["pii"] == (1, len(data))


def test_a_stream_never_uses_a_branch_key(svc: EncryptionService) -> None:
    sealed = io.BytesIO()
    svc.encrypt_stream(io.BytesIO(b"x"), sealed, CTX)
    header = parse_stream_header(sealed.getvalue()[:4096])
    assert parse_envelope(header.key_envelope).kind == "stored"
    with pytest.raises(InvalidArgumentError):
        svc.encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), CTX, key_reference="branch")
