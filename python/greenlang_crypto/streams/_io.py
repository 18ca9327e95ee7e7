"""Byte plumbing of streams: sources, destinations and their sizes.

Anything a stream reads from becomes something with ``readinto`` (:func:`as_reader`), and the
framing code fills and drains reused buffers through :func:`_fill` and :func:`_write_all`. The
run size lives here, read at call time by the modules that size buffers from it, so one
setting (see the package's ``__init__``) tunes them all.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from greenlang_crypto._core import STREAM_MAGIC
from greenlang_crypto.exceptions import InvalidArgumentError

#: Plaintext bytes sealed per Rust call when encrypting (a few segments amortize the call and
#: the write; more would only grow the buffers).
RUN_BYTES = 1 << 20
#: SEGMENT_OVERHEAD: the GCM tag every segment adds.
TAG_LEN = 16


class _Readable(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


class _Writable(Protocol):
    def write(self, data: Any, /) -> int | None: ...


def is_stream(prefix: bytes) -> bool:
    """Whether ``prefix`` (the first bytes of a ciphertext) starts a stream, not an envelope."""
    return len(prefix) > 0 and prefix[0] == STREAM_MAGIC


class _IterReader(io.RawIOBase):
    """A read-only raw file over an iterable of byte chunks (no copy of the whole)."""

    def __init__(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self._it: Iterator[bytes | bytearray | memoryview] = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        while not len(self._pending):
            try:
                chunk = next(self._it)
            except StopIteration:
                return 0
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError("an iterable source must yield bytes-like chunks")
            self._pending = memoryview(chunk).cast("B")
        n = min(len(out), len(self._pending))
        out[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def as_reader(src: object) -> _Readable:
    """``src`` as something with ``readinto``: a binary file object or an iterable of bytes.

    Raises:
        TypeError: ``src`` is a text file, bytes itself, or neither kind.
    """
    if isinstance(src, io.TextIOBase):
        raise TypeError("src must be a binary file object, not a text file")
    if hasattr(src, "readinto"):
        return src
    if hasattr(src, "read"):
        return _ReadAdapter(src)
    if isinstance(src, bytes | bytearray | memoryview | str):
        raise TypeError("src must be a binary file object or an iterable of bytes chunks")
    if isinstance(src, Iterable):
        return _IterReader(src)
    raise TypeError("src must be a binary file object or an iterable of bytes chunks")


class _ReadAdapter:
    """``readinto`` for objects that only have ``read`` (such as botocore's StreamingBody)."""

    def __init__(self, src: Any) -> None:
        self._src = src

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        data = self._src.read(len(out))
        if not data:
            return 0
        out[: len(data)] = data
        return len(data)


def _fill(src: _Readable, view: memoryview) -> int:
    """Reads until ``view`` is full or the source ends; returns the bytes read."""
    got = 0
    size = len(view)
    while got < size:
        n = src.readinto(view[got:])
        if n is None:
            raise InvalidArgumentError("non-blocking sources are not supported")
        if n == 0:
            break
        got += n
    return got


def _write_all(dst: _Writable, view: memoryview) -> None:
    # A raw file may write less than asked; buffered files and most others write everything.
    while len(view):
        n = dst.write(view)
        if n is None:
            raise InvalidArgumentError("non-blocking destinations are not supported")
        if n >= len(view):
            return
        view = view[n:]
