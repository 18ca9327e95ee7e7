"""Pulling a pushed stream: the reader over a producer thread, its header, errors, early close."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

import pytest

from greenlang_crypto.exceptions import InvalidArgumentError, PayloadTooLargeError
from greenlang_crypto.streams import _io, _pull, _seal
from greenlang_crypto.streams._open import DecryptingReader, read_header
from tests.unit.streams._keys import SEG, StreamKeys


def producer(keys: StreamKeys, pt: bytes, max_bytes: int = 1 << 30) -> Callable[[Any], object]:
    enc = keys.encryptor()
    return lambda dst: _seal.encrypt_to(enc, io.BytesIO(pt), dst, max_bytes=max_bytes)


def test_the_reader_gives_the_stream_the_producer_writes(
    keys: StreamKeys, data: Callable[[int], bytes]
) -> None:
    pt = data(3 * SEG + 5)
    with _pull.EncryptingReader(producer(keys, pt)) as reader:
        header = reader.header
        blob = reader.readall()
    assert blob.startswith(header)
    src = io.BytesIO(blob)
    assert read_header(src) == header
    with DecryptingReader(src, keys.decryptor(header)) as plain:
        assert plain.readall() == pt


def test_small_reads_see_every_byte_once(keys: StreamKeys, data: Callable[[int], bytes]) -> None:
    pt = data(SEG + 1)
    whole = b""
    with _pull.EncryptingReader(producer(keys, pt)) as reader:
        while chunk := reader.read(1000):
            whole += chunk
    expected = len(keys.encryptor().header) + keys.encryptor().sealed_len(SEG + 1, True)
    assert len(whole) == expected


def test_readall_reads_in_runs(
    keys: StreamKeys, data: Callable[[int], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    real = _pull.EncryptingReader.read

    def spy(self: Any, n: int = -1) -> bytes:
        asked.append(n)
        return real(self, n)  # type: ignore[no-any-return]

    monkeypatch.setattr(_io, "RUN_BYTES", 4096)
    monkeypatch.setattr(_pull.EncryptingReader, "read", spy)
    with _pull.EncryptingReader(producer(keys, data(100))) as reader:
        reader.readall()
    assert asked and set(asked) == {4096}


def test_an_error_before_the_header_comes_from_the_constructor(keys: StreamKeys) -> None:
    def refuse(dst: Any) -> None:
        raise PayloadTooLargeError("too big")

    with pytest.raises(PayloadTooLargeError, match="too big"):
        _pull.EncryptingReader(refuse)


def test_a_producer_that_writes_nothing_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="wrote nothing"):
        _pull.EncryptingReader(lambda dst: None)


def test_an_error_after_the_header_comes_from_a_read(
    keys: StreamKeys, data: Callable[[int], bytes]
) -> None:
    pt = data(5 * SEG)
    with _pull.EncryptingReader(producer(keys, pt, max_bytes=2 * SEG)) as reader:
        with pytest.raises(PayloadTooLargeError):
            reader.readall()
        assert reader.read(10) == b""


def test_closing_early_stops_the_producer(keys: StreamKeys, data: Callable[[int], bytes]) -> None:
    seen: list[BrokenPipeError] = []
    inner = producer(keys, data(8 * SEG))

    def produce(dst: Any) -> None:
        try:
            inner(dst)
        except BrokenPipeError as exc:
            seen.append(exc)
            raise

    before = threading.active_count()
    reader = _pull.EncryptingReader(produce)
    reader.read(10)
    reader.close()
    assert len(seen) == 1
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="closed file"):
        reader.readinto(bytearray(1))
