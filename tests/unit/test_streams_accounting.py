"""A reader that failed is counted once, as a failure, when it closes (not as a decrypt)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from greenlang_crypto.exceptions import DecryptionError
from tests.unit.test_streams import AD, CTX, SEG, data, make, seal


def test_a_failed_read_is_counted_as_a_failure_once(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    bad = bytearray(seal(svc, data(2 * SEG)))
    bad[-1] ^= 1
    with svc.open_decrypting(io.BytesIO(bytes(bad)), CTX, AD) as r, pytest.raises(DecryptionError):
        r.read()
    with pytest.raises(DecryptionError):
        svc.decrypt_stream(io.BytesIO(bytes(bad)), io.BytesIO(), CTX, AD)
    assert svc.failure_counts() == {("decrypt", "DecryptionError"): 2}
    assert svc.operation_counts()["decrypt"].get("documents", (0, 0)) == (0, 0)
    svc.close()
