"""Large objects: stream format v1 (segmented AES-256-GCM) over files, pipes and iterables.

The format is specified in docs/FORMAT.md ("Stream format v1"); the cryptography lives in the
Rust core (``StreamEncryptor`` and ``StreamDecryptor``). This module only moves bytes: it reads
runs of whole segments into reused buffers, has Rust seal or open them in place with the GIL
released, and writes them out. Memory stays constant whatever the size of the object.

The :class:`~greenlang_crypto.service.EncryptionService` methods ``encrypt_stream``,
``open_decrypting``, ``decrypt_stream``, ``encrypt_file`` and ``decrypt_file`` are the public
entry points; they supply the keys (one DEK per stream, from the same cache and providers as
envelopes) and count the operation once per stream.

Decryption never hands out plaintext that did not authenticate: a run of segments is opened
into a buffer and copied to the caller only after every tag in it verified, and the final
segment carries a flag in its nonce, so a stream cut at a segment boundary fails when its
(apparent) last segment is read.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from greenlang_crypto._core import (
    STREAM_FIXED_LEN,
    STREAM_MAGIC,
    StreamDecryptor,
    StreamEncryptor,
    stream_header_len,
    stream_plaintext_len,
    wipe_buffer,
)
from greenlang_crypto._files import atomic_output
from greenlang_crypto.exceptions import (
    DecryptionError,
    InvalidArgumentError,
    InvalidEnvelopeError,
    PayloadTooLargeError,
)

__all__ = [
    "DecryptingReader",
    "EncryptingReader",
    "atomic_output",
    "decrypt_to",
    "encrypt_to",
    "is_stream",
    "read_header",
    "sealed_runs",
]

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


def sealed_runs(
    encryptor: StreamEncryptor,
    src: object,
    *,
    max_bytes: int,
    threads: int = 1,
    progress: Callable[[int], object] | None = None,
    on_done: Callable[[int], object] | None = None,
) -> Iterator[memoryview]:
    """The stream of ``src`` sealed by ``encryptor``: the header, then one view per run.

    Each view is valid until the next one is requested (the buffers are reused). One
    plaintext buffer (a run and one byte more) and one output buffer: a run is sealed only
    once one byte beyond it shows whether more follows, since the final segment is sealed
    differently (its nonce flag); that byte then starts the next run. ``on_done`` gets the
    plaintext length once the final segment is out.

    Raises:
        PayloadTooLargeError: More than ``max_bytes`` of plaintext (what was produced so far is
            an incomplete stream that does not decrypt).
    """
    yield memoryview(encryptor.header)
    for view, have in _seal_runs(
        encryptor, src, max_bytes=max_bytes, threads=threads, buffers=1, on_done=on_done
    ):
        yield view
        if progress is not None:
            progress(have)


def _seal_runs(
    encryptor: StreamEncryptor,
    src: object,
    *,
    max_bytes: int,
    threads: int,
    buffers: int,
    on_done: Callable[[int], object] | None,
) -> Iterator[tuple[memoryview, int]]:
    """The sealed runs of ``src`` (no header), each with its plaintext length.

    The runs rotate over ``buffers`` output buffers, so a view stays valid until ``buffers``
    more have been requested; a second buffer is allocated only when a second run comes.
    """
    reader = as_reader(src)
    seg = encryptor.segment_size
    # A run holds at least one segment per sealing thread, or the extra threads idle.
    run = max(seg * max(1, threads), RUN_BYTES - RUN_BYTES % seg)
    buf = bytearray(run + 1)
    view = memoryview(buf)
    out_len = encryptor.sealed_len(run, False) + TAG_LEN
    outs = [memoryview(bytearray(out_len))]
    # A regular file says how much follows, so most runs need no look-ahead byte and reads
    # stay aligned to whole runs (which the page cache and tmpfs copy fastest). Should the file
    # shrink meanwhile, the next run is an empty final segment, which is valid.
    expected = regular_file_size(src)
    ahead = 0
    total = 0
    turn = 0
    try:
        while True:
            carry = False
            if expected is not None and total + run < expected:
                have = ahead + _fill(reader, view[ahead:run])
                last = have < run
            else:
                got = ahead + _fill(reader, view[ahead:])
                last = got <= run
                have = got if last else run
                carry = not last
            total += have
            if total > max_bytes:
                raise PayloadTooLargeError(f"stream exceeds the maximum of {max_bytes} bytes")
            n = encryptor.sealed_len(have, last)
            slot = turn % buffers
            if slot == len(outs):
                outs.append(memoryview(bytearray(out_len)))
            out_view = outs[slot]
            encryptor.seal_into(view[:have], out_view[:n], last, threads)
            turn += 1
            yield out_view[:n], have
            if last:
                if on_done is not None:
                    on_done(total)
                return
            if carry:
                buf[0] = buf[run]
            ahead = int(carry)
    finally:
        # The last run's plaintext would otherwise stay in freed memory.
        wipe_buffer(buf)


class _Writer:
    """Writes views to a destination on its own thread, in order, while the caller makes more.

    The caller seals (or opens) run N+1 while this thread writes run N: file reads and writes
    and the Rust calls all release the GIL, so the seal overlaps the I/O on a second core. The
    caller owns the buffers and reuses one only after :meth:`wait` says the views in it were
    written. An error of the destination is raised to the caller at its next
    :meth:`submit`, :meth:`wait` or :meth:`finish`; :meth:`abort` stops the thread after the
    write in progress. ``progress`` runs on the caller's thread, once a write completed.
    """

    def __init__(self, dst: _Writable, progress: Callable[[int], object] | None) -> None:
        self._dst = dst
        self._progress = progress
        self._cond = threading.Condition()
        self._queue: deque[tuple[memoryview, int]] = deque()
        self._written: list[int] = []
        self._error: BaseException | None = None
        self._closing = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="glc-stream-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing and not self._stop:
                        self._cond.wait()
                    if self._stop or not self._queue:
                        return
                    view, count = self._queue[0]
                _write_all(self._dst, view)
                with self._cond:
                    self._queue.popleft()
                    self._written.append(count)
                    self._cond.notify_all()
        except BaseException as exc:  # raised to the caller, which stops feeding this thread
            with self._cond:
                self._error = exc
                self._queue.clear()
                self._cond.notify_all()

    def _settle(self) -> None:
        # Called with the lock held: raise the writer's error, else report finished writes.
        if self._error is not None:
            raise self._error
        done, self._written = self._written, []
        if self._progress is not None:
            for count in done:
                self._progress(count)

    def submit(self, view: memoryview, count: int) -> None:
        """Queues ``view`` (``count`` bytes of progress); raises the writer's error, if any."""
        with self._cond:
            self._settle()
            self._queue.append((view, count))
            self._cond.notify_all()

    def wait(self, pending: int) -> None:
        """Waits until at most ``pending`` views remain to be written."""
        with self._cond:
            while len(self._queue) > pending and self._error is None:
                self._cond.wait()
            self._settle()

    def finish(self) -> None:
        """Writes what is queued, stops the thread and raises its error, if any."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            self._settle()

    def abort(self) -> None:
        """Stops the thread after the write in progress, dropping what is queued."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()


def _write_runs(
    views: Iterator[tuple[memoryview, int]],
    dst: _Writable,
    progress: Callable[[int], object] | None,
) -> None:
    """Writes ``views`` (rotating over two buffers) to ``dst``, overlapped when it pays.

    With a single view everything stays on the caller's thread. From the second on, a
    :class:`_Writer` writes view N while the caller makes view N+1; before asking for the
    next view (which reuses the buffer of view N-1) the caller waits until at most one view,
    the latest, is left to write, so memory stays two buffers and writes stay in order.
    """
    first = next(views, None)
    if first is None:
        return
    second = next(views, None)
    if second is None:
        _write_all(dst, first[0])
        if progress is not None:
            progress(first[1])
        return
    writer = _Writer(dst, progress)
    try:
        writer.submit(*first)
        writer.submit(*second)
        while True:
            writer.wait(1)
            item = next(views, None)
            if item is None:
                break
            writer.submit(*item)
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def encrypt_to(
    encryptor: StreamEncryptor,
    src: object,
    dst: _Writable,
    *,
    max_bytes: int,
    threads: int = 1,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Writes the stream of ``src`` sealed by ``encryptor`` to ``dst``; returns plaintext bytes.

    A stream of more than one run is written by a second thread while the next run is read
    and sealed (see :class:`_Writer`); the writes stay in order and in the caller's memory
    budget (two output runs), and an error of ``dst`` or ``src`` stops both threads.

    Raises:
        PayloadTooLargeError: As :func:`sealed_runs`.
    """
    total = [0]
    _write_all(dst, memoryview(encryptor.header))
    runs = _seal_runs(
        encryptor,
        src,
        max_bytes=max_bytes,
        threads=threads,
        buffers=2,
        on_done=lambda n: total.__setitem__(0, n),
    )
    _write_runs(runs, dst, progress)
    return total[0]


class EncryptingReader(io.RawIOBase):
    """A read-only raw file of a stream that ``produce`` writes on a worker thread.

    For consumers that pull bytes, such as s3transfer's multipart upload, while encryption
    pushes them (``produce`` is, for example, ``lambda dst: service.encrypt_stream(src, dst,
    ...)``). Each write is handed over without a copy: the writer waits until the reader has
    taken all of it, so memory stays that of the encryption itself. An error of ``produce``
    is raised to the reader; closing the reader early stops ``produce`` (its next write
    raises ``BrokenPipeError``).

    Raises:
        Exception: Whatever ``produce`` raised before writing the header (for example
            ``PayloadTooLargeError`` or a ``KmsError``), from the constructor.
    """

    def __init__(self, produce: Callable[[_Writable], object]) -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._slot = memoryview(b"")
        self._done = False
        self._abandoned = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(produce,), name="glc-encrypting-reader", daemon=True
        )
        self._thread.start()
        with self._cond:
            while not len(self._slot) and not self._done:
                self._cond.wait()
            if not len(self._slot):
                self._raise_or_eof()
                raise InvalidArgumentError("the producer wrote nothing")
            #: The stream header (the producer's first write), before any plaintext is read.
            self.header = bytes(self._slot)

    def _run(self, produce: Callable[[_Writable], object]) -> None:
        try:
            produce(_HandOff(self))
        except BaseException as exc:  # handed to the reader, which raises it
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _offer(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        with self._cond:
            if self._abandoned:
                raise BrokenPipeError("the encrypting reader was closed")
            self._slot = view
            self._cond.notify_all()
            while len(self._slot) and not self._abandoned:
                self._cond.wait()
            if len(self._slot):
                raise BrokenPipeError("the encrypting reader was closed")
        return len(view)

    def _raise_or_eof(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def readable(self) -> bool:
        """Always true."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fills ``buffer`` with the next ciphertext bytes (less only at the end).

        Raises:
            Exception: What the producer raised (once; later reads return 0).
        """
        if self.closed:
            raise ValueError("I/O operation on closed file")
        out = memoryview(buffer).cast("B")
        got = 0
        with self._cond:
            while got < len(out):
                while not len(self._slot) and not self._done:
                    self._cond.wait()
                if not len(self._slot):
                    self._raise_or_eof()
                    break
                n = min(len(out) - got, len(self._slot))
                out[got : got + n] = self._slot[:n]
                self._slot = self._slot[n:]
                got += n
                if not len(self._slot):
                    self._cond.notify_all()
        return got

    def readall(self) -> bytes:
        """Reads the rest of the stream."""
        parts: list[bytes] = []
        while chunk := self.read(RUN_BYTES):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Stops the producer if it has not finished, and waits for its thread."""
        if self.closed:
            return
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()
        self._thread.join()
        super().close()

    def __repr__(self) -> str:
        return "<EncryptingReader>"


class _HandOff:
    """The producer's side of an :class:`EncryptingReader`."""

    def __init__(self, reader: EncryptingReader) -> None:
        self._reader = reader

    def write(self, data: Any) -> int:
        return self._reader._offer(data)


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
        self._run_segs = max(1, threads, RUN_BYTES // self._seg)
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
            scratch = bytearray(min(skip, RUN_BYTES))
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
    chunk = max(RUN_BYTES, reader.run_bytes)
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


def regular_file_size(src: object) -> int | None:
    """The size of ``src`` when it is a regular file (known before reading), else ``None``."""
    fileno = getattr(src, "fileno", None)
    if fileno is None:
        return None
    try:
        st = os.fstat(fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    tell = getattr(src, "tell", None)
    try:
        pos = tell() if tell is not None else 0
    except (OSError, io.UnsupportedOperation):
        pos = 0
    return max(0, st.st_size - pos)
