"""Byte plumbing of streams: what counts as a source, filling and draining buffers, sizes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from greenlang_crypto._core import ENVELOPE_MAGIC, STREAM_MAGIC
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.streams import _io


class Trickle(io.RawIOBase):
    """A source that gives at most ``step`` bytes per read."""

    def __init__(self, blob: bytes, step: int) -> None:
        self._blob = blob
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(self._step, len(buffer), len(self._blob))
        buffer[:n] = self._blob[:n]
        self._blob = self._blob[n:]
        return n


class NonBlocking(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> None:  # type: ignore[override]
        return None


class OnlyRead:
    """Has ``read`` and nothing else, as botocore's StreamingBody."""

    def __init__(self, blob: bytes) -> None:
        self._src = io.BytesIO(blob)

    def read(self, n: int) -> bytes:
        return self._src.read(min(n, 3))


def test_is_stream_looks_at_the_first_byte_only() -> None:
    assert _io.is_stream(bytes([STREAM_MAGIC]) + b"anything")
    assert not _io.is_stream(bytes([ENVELOPE_MAGIC]) + b"anything")
    assert not _io.is_stream(b"")


def test_as_reader_keeps_a_binary_file_and_refuses_text_and_bytes() -> None:
    f = io.BytesIO(b"abc")
    assert _io.as_reader(f) is f
    with pytest.raises(TypeError, match="text file"):
        _io.as_reader(io.StringIO("abc"))
    for wrong in (b"abc", bytearray(b"abc"), "abc", 42):
        with pytest.raises(TypeError, match="iterable of bytes"):
            _io.as_reader(wrong)


def test_an_iterable_of_chunks_reads_across_chunk_boundaries() -> None:
    chunks: Iterator[bytes | bytearray | memoryview] = iter(
        [b"ab", bytearray(b""), memoryview(b"cdefg"), b"h"]
    )
    reader = _io.as_reader(chunks)
    out = bytearray(8)
    assert _io._fill(reader, memoryview(out)) == 8
    assert bytes(out) == b"abcdefgh"
    assert reader.readinto(bytearray(4)) == 0


def test_an_iterable_must_yield_bytes() -> None:
    reader = _io.as_reader(iter(["text"]))
    with pytest.raises(TypeError, match="bytes-like"):
        reader.readinto(bytearray(4))


def test_an_object_with_only_read_is_adapted() -> None:
    reader = _io.as_reader(OnlyRead(b"0123456789"))
    assert isinstance(reader, _io._ReadAdapter)
    out = bytearray(10)
    assert _io._fill(reader, memoryview(out)) == 10
    assert bytes(out) == b"0123456789"
    assert reader.readinto(bytearray(2)) == 0


def test_fill_reads_until_full_or_the_end() -> None:
    out = bytearray(10)
    assert _io._fill(Trickle(b"x" * 25, 3), memoryview(out)) == 10
    short = bytearray(10)
    assert _io._fill(Trickle(b"y" * 7, 3), memoryview(short)) == 7
    assert bytes(short[:7]) == b"y" * 7


def test_fill_refuses_a_non_blocking_source() -> None:
    with pytest.raises(InvalidArgumentError, match="non-blocking"):
        _io._fill(NonBlocking(), memoryview(bytearray(4)))


def test_write_all_finishes_short_writes_and_refuses_non_blocking() -> None:
    written: list[bytes] = []

    class Short:
        def write(self, data: Any) -> int:
            written.append(bytes(data[:2]))
            return min(2, len(data))

    _io._write_all(Short(), memoryview(b"abcde"))
    assert written == [b"ab", b"cd", b"e"]

    class Blocked:
        def write(self, data: Any) -> None:
            return None

    with pytest.raises(InvalidArgumentError, match="non-blocking"):
        _io._write_all(Blocked(), memoryview(b"abc"))
