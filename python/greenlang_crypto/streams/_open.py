"""Decryption of streams: a reader that hands out only authenticated plaintext.

A run of segments is opened into a buffer and copied to the caller only after every tag in it
verified, and the final segment carries a flag in its nonce, so a stream cut at a segment
boundary fails when its (apparent) last segment is read.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import Any

from greenlang_crypto._core import (
    STREAM_FIXED_LEN,
    StreamDecryptor,
    stream_header_len,
    stream_plaintext_len,
    wipe_buffer,
)
from greenlang_crypto.exceptions import DecryptionError, InvalidArgumentError, InvalidEnvelopeError
from greenlang_crypto.streams import _io
from greenlang_crypto.streams._io import TAG_LEN, _fill, _Readable, _Writable, as_reader
from greenlang_crypto.streams._pipeline import _write_runs


def read_header(src: _Readable) -> bytes:
    """Reads a stream header from the start of ``src``.

    Raises:
        InvalidEnvelopeError: Not a stream, or a truncated or malformed header.
        UnsupportedFormatError: A stream format version or algorithm this library lacks.
    """
    fixed = bytearray(STREAM_FIXED_LEN)
    if _fill(src, memoryview(fixed)) < STREAM_FIXED_LEN:
        raise InvalidEnvelopeError("truncated stream header")
    hlen = stream_header_len(bytes(fixed))
    header = bytearray(hlen)
    header[:STREAM_FIXED_LEN] = fixed
    if _fill(src, memoryview(header)[STREAM_FIXED_LEN:]) < hlen - STREAM_FIXED_LEN:
        raise InvalidEnvelopeError("truncated stream header")
    return bytes(header)


class DecryptingReader(io.RawIOBase):
    """A read-only raw file of the plaintext of a stream; seekable when its source is.

    Made by :meth:`EncryptionService.open_decrypting`. Reads open whole runs of segments and
    copy out only plaintext that authenticated; a failure raises the opaque
    :class:`DecryptionError` (every later read fails too). On a seekable source, any byte range
    opens only the segments that cover it. Closing the reader does not close the source unless
    ``close_source`` was given.

    Args:
        src: The source, positioned just after the header.
        decryptor: The decryptor whose header verified.
        start: The source offset of the header (segments follow it).
        on_close: Called once when the reader closes after no authentication failure, with
            the plaintext bytes returned.
        on_failure: Called once when the reader closes after an authentication failure, with
            that failure (instead of ``on_close``).
        close_source: Close ``src`` with the reader.
        threads: Threads opening the segments of one run.
    """

    def __init__(
        self,
        src: Any,
        decryptor: StreamDecryptor,
        *,
        start: int = 0,
        on_close: Callable[[int], object] | None = None,
        on_failure: Callable[[DecryptionError], object] | None = None,
        close_source: bool = False,
        threads: int = 1,
    ) -> None:
        super().__init__()
        self._src = src
        self._reader = as_reader(src)
        self._dec = decryptor
        self._seg = decryptor.segment_size
        self._sealed_seg = self._seg + TAG_LEN
        self._body = start + decryptor.header_len
        self._threads = threads
        self._on_close = on_close
        self._on_failure = on_failure
        self._close_source = close_source
        self._delivered = 0
        self._failed = False
        self._failure: DecryptionError | None = None
        self._seekable = bool(getattr(src, "seekable", lambda: False)())
        self._pos = 0
        # Decrypted plaintext of segments [_buf_first, _buf_first + _buf_segs): _buf[:_buf_len].
        self._run_segs = max(1, threads, _io.RUN_BYTES // self._seg)
        self._plain = bytearray(self._run_segs * self._seg)
        # With two plaintext buffers (see _double_buffer), each run opens into the buffer the
        # previous run did not use, so a view of that run stays valid while the next opens.
        self._spare: bytearray | None = None
        self._double = False
        self._opens = 0
        self._sealed = bytearray(self._run_segs * self._sealed_seg + 1)
        self._buf_first = -1
        self._buf_len = 0
        self._size: int | None = None
        self._segments: int | None = None
        self._next_seg = 0  # sequential mode: the next segment the source delivers
        self._ahead = 0  # sequential mode: bytes read ahead at the start of _sealed
        self._eof = False
        if self._seekable:
            end = src.seek(0, os.SEEK_END)
            size, segments = stream_plaintext_len(decryptor.header_len, self._seg, end - start)
            self._size, self._segments = size, segments

    # -- io.RawIOBase --------------------------------------------------------------------

    def readable(self) -> bool:
        """Always true."""
        return True

    def seekable(self) -> bool:
        """True when the source is seekable."""
        return self._seekable

    def writable(self) -> bool:
        """Always false."""
        return False

    def write(self, data: Any, /) -> int:
        """Always raises ``io.UnsupportedOperation``: the reader is read-only."""
        raise io.UnsupportedOperation("the reader is read-only")

    def tell(self) -> int:
        """The plaintext position."""
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Moves the plaintext position; ``SEEK_END`` counts from the plaintext length.

        Raises:
            io.UnsupportedOperation: The source is not seekable.
            ValueError: A negative position or an unknown ``whence``.
        """
        self._check_open()
        if not self._seekable:
            raise io.UnsupportedOperation("the source is not seekable")
        assert self._size is not None
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    @property
    def segment_size(self) -> int:
        """Plaintext bytes per segment."""
        return self._seg

    @property
    def run_bytes(self) -> int:
        """Plaintext bytes opened by one Rust call at most (whole segments, one per thread)."""
        return self._run_segs * self._seg

    @property
    def header_len(self) -> int:
        """Length of the stream header."""
        return self._dec.header_len

    @property
    def size(self) -> int | None:
        """Plaintext length from the source length (seekable sources), else ``None``.

        The length is proven only once the final segment has been read: a stream cut at a
        segment boundary shows a shorter size and fails when its end is read.
        """
        return self._size

    def verify_size(self) -> int:
        """The plaintext length, authenticated: the final segment is opened first.

        :attr:`size` is computed from the source's length, which whoever stored the stream can
        change. This opens the last segment, whose tag covers its "final" flag, so a stream
        cut short (inside a segment or at a boundary) or extended fails here, before any
        length is reported. The segment stays loaded for a read that reaches it.

        Raises:
            io.UnsupportedOperation: The source is not seekable.
            DecryptionError: The stream was cut or extended, or does not authenticate.
        """
        self._check_open()
        if not self._seekable:
            raise io.UnsupportedOperation("the source is not seekable")
        if self._failed:
            raise DecryptionError()
        assert self._segments is not None and self._size is not None
        try:
            self._load_at(self._segments - 1, 1)
        except DecryptionError:
            self._failed = True
            self._failure = DecryptionError()
            self._buf_first, self._buf_len = -1, 0
            raise DecryptionError() from None
        return self._size

    def readinto(self, buffer: Any) -> int:
        """Reads plaintext into ``buffer``; returns the bytes read (0 at the end).

        Raises:
            DecryptionError: A segment does not authenticate, or the stream was cut or
                extended (opaque; the reader is unusable afterwards).
        """
        self._check_open()
        out = memoryview(buffer).cast("B")
        if not len(out):
            return 0
        if self._failed:
            raise DecryptionError()
        try:
            n = self._read(out)
        except DecryptionError:
            self._failed = True
            self._failure = DecryptionError()
            self._buf_first, self._buf_len = -1, 0
            raise DecryptionError() from None
        self._delivered += n
        return n

    def readall(self) -> bytes:
        """Reads to the end in runs of segments."""
        parts: list[bytes] = []
        while True:
            chunk = self.read(len(self._plain))
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    def close(self) -> None:
        """Closes the reader (and the source with ``close_source``); reports the count once."""
        if self.closed:
            return
        try:
            on_close, on_failure = self._on_close, self._on_failure
            self._on_close = self._on_failure = None
            if self._failure is None:
                if on_close is not None:
                    on_close(self._delivered)
            elif on_failure is not None:
                on_failure(self._failure)
            if self._close_source:
                self._src.close()
        finally:
            # Wipe, then drop, the plaintext buffers with the reader (a view handed out by
            # read_view reads zeros from now on).
            wipe_buffer(self._plain)
            if self._spare is not None:
                wipe_buffer(self._spare)
            self._plain = bytearray()
            self._spare = None
            super().close()

    def __repr__(self) -> str:
        return f"<DecryptingReader segment_size={self._seg} position={self._pos}>"

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _read(self, out: memoryview) -> int:
        # Fill the whole buffer unless the stream ends, as a regular file does: callers of
        # ``read(n)`` rarely expect a short read before the end.
        got = 0
        while got < len(out):
            view = self._next_view(len(out) - got)
            n = len(view)
            if not n:
                break
            out[got : got + n] = view
            got += n
        return got

    def _next_view(self, limit: int) -> memoryview:
        """Up to ``limit`` plaintext bytes at the position, as a view of the run buffer."""
        seg = self._seg
        index = self._pos // seg
        loaded = self._buf_first <= index < self._buf_first + self._run_segs_loaded()
        # A seekable source gives only the segments this read covers (a ranged read touches
        # nothing else); a pipe gives whole runs.
        wanted = -(-(self._pos - index * seg + limit) // seg)
        if not loaded and not self._load(index, wanted):
            return memoryview(b"")
        offset = self._pos - self._buf_first * seg
        if offset >= self._buf_len:
            return memoryview(b"")
        n = min(limit, self._buf_len - offset)
        self._pos += n
        return memoryview(self._plain)[offset : offset + n]

    def read_view(self, limit: int) -> memoryview:
        """Like :meth:`read`, without a copy: a view valid until the next read or seek.

        Raises:
            DecryptionError: As :meth:`readinto`.
        """
        self._check_open()
        if self._failed:
            raise DecryptionError()
        try:
            view = self._next_view(limit)
        except DecryptionError:
            self._failed = True
            self._failure = DecryptionError()
            self._buf_first, self._buf_len = -1, 0
            raise DecryptionError() from None
        self._delivered += len(view)
        return view

    def _run_segs_loaded(self) -> int:
        return -(-self._buf_len // self._seg) if self._buf_len else 0

    def _load(self, index: int, wanted: int) -> bool:
        """Opens the run of segments starting at ``index``; False past the end."""
        if self._seekable:
            return self._load_at(index, wanted)
        return self._load_next(index)

    def _load_at(self, index: int, wanted: int) -> bool:
        assert self._segments is not None
        if index >= self._segments:
            return False
        count = max(1, min(wanted, self._run_segs, self._segments - index))
        last = index + count == self._segments
        self._src.seek(self._body + index * self._sealed_seg)
        want = count * self._sealed_seg
        if last:
            assert self._size is not None
            want = self._size - index * self._seg + count * TAG_LEN
        sealed = memoryview(self._sealed)[:want]
        if _fill(self._reader, sealed) != want:
            # The source shrank under us; what remains cannot be the stream that was opened.
            raise DecryptionError()
        self._open(index, sealed, last)
        return True

    def _load_next(self, index: int) -> bool:
        if index < self._next_seg:
            raise io.UnsupportedOperation("the source is not seekable")
        while True:
            if self._eof:
                return False
            sealed_run = self._run_segs * self._sealed_seg
            view = memoryview(self._sealed)
            # One byte more than a run tells whether another segment follows this run.
            got = self._ahead + _fill(self._reader, view[self._ahead : sealed_run + 1])
            last = got <= sealed_run
            n = got if last else sealed_run
            first = self._next_seg
            self._open(first, view[:n], last)
            count = -(-n // self._sealed_seg) if n else 1
            self._next_seg = first + count
            if last:
                self._eof = True
                self._ahead = 0
            else:
                view[0] = view[sealed_run]
                self._ahead = 1
            if index < self._next_seg:
                return True

    def _double_buffer(self) -> None:
        """From now on, views of a run stay valid until two more runs have been opened."""
        self._double = True

    def _open(self, first: int, sealed: memoryview, last: bool) -> None:
        n = self._dec.opened_len(len(sealed), last)
        if self._double and self._opens:
            if self._spare is None:
                self._spare = bytearray(len(self._plain))
            self._plain, self._spare = self._spare, self._plain
        self._opens += 1
        self._dec.open_into(first, sealed, memoryview(self._plain)[:n], last, self._threads)
        self._buf_first = first
        self._buf_len = n


def decrypt_to(
    reader: DecryptingReader,
    dst: _Writable,
    *,
    start: int = 0,
    end: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Copies the plaintext ``[start, end)`` of ``reader`` to ``dst``; returns bytes written.

    On a source that cannot seek, the bytes before ``start`` are opened and discarded. A range
    of more than one run is written by a second thread while the next run is read and opened
    (see :class:`_Writer`); only runs whose every tag verified are handed to it, and a failure
    stops it before the error is raised.
    """
    if start < 0 or (end is not None and end < start):
        raise InvalidArgumentError("the range must satisfy 0 <= start <= end")
    if start:
        if reader.seekable():
            reader.seek(start)
        else:
            skip = start
            scratch = bytearray(min(skip, _io.RUN_BYTES))
            try:
                while skip:
                    n = reader.readinto(memoryview(scratch)[: min(skip, len(scratch))])
                    if not n:
                        break
                    skip -= n
            finally:
                wipe_buffer(scratch)
    # A view never spans two runs and asks for at least a run, so each view after the first
    # opens one new run: with two plaintext buffers, views alternate between them as
    # _write_runs expects.
    reader._double_buffer()
    chunk = max(_io.RUN_BYTES, reader.run_bytes)
    written = 0

    def views() -> Iterator[tuple[memoryview, int]]:
        nonlocal written
        while end is None or start + written < end:
            want = chunk if end is None else min(chunk, end - start - written)
            view = reader.read_view(want)
            n = len(view)
            if not n:
                return
            written += n
            yield view, n

    _write_runs(views(), dst, progress)
    return written
