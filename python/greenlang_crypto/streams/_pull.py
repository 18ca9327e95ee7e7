"""Pulling a stream that encryption pushes: a reader over a producer on a worker thread."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.streams import _io
from greenlang_crypto.streams._io import _Writable


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
        while chunk := self.read(_io.RUN_BYTES):
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
