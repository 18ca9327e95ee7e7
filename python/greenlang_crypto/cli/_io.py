"""Inputs and outputs of the CLI: files or the standard streams, with one-line errors.

An output file appears only when complete and verified (see
:func:`greenlang_crypto._files.atomic_output`); devices, FIFOs and descriptor links are
written in place, as streams. A failing read is a usage error naming the input, a failing
write an :class:`OutputError` naming the output, so neither is taken for the other.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol

from greenlang_crypto._files import FILE_MODE, atomic_output, regular_file_size
from greenlang_crypto.exceptions import OutputError, PayloadTooLargeError

__all__ = [
    "UsageError",
    "Writable",
    "byte_progress",
    "key_progress",
    "open_input",
    "open_output",
    "read_input",
    "unreadable",
    "write_output",
]


class UsageError(Exception):
    """A problem with the command line or the files it names (exit code 2, one line)."""


def unreadable(path: str | None, exc: OSError) -> UsageError:
    """The usage error for an input that cannot be read (``None`` or ``-``: stdin)."""
    name = "standard input" if path in (None, "-") else path
    return UsageError(f"cannot read {name}: {exc.strerror or type(exc).__name__}")


def read_input(path: str | None, limit: int) -> bytes:
    """Reads the input, refusing more than ``limit`` bytes before reading them."""
    if path in (None, "-"):
        # A pipe has no size: read one byte past the limit to tell "too large" apart.
        try:
            data = sys.stdin.buffer.read(limit + 1)
        except OSError as exc:
            raise unreadable(path, exc) from exc
        if len(data) > limit:
            raise PayloadTooLargeError(f"input is larger than {limit} bytes")
        return data
    try:
        with open(path, "rb") as f:
            size = regular_file_size(f)
            if size is not None and size > limit:
                raise PayloadTooLargeError(f"input is {size} bytes, more than {limit}")
            data = f.read(limit + 1)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    if len(data) > limit:
        raise PayloadTooLargeError(f"input is larger than {limit} bytes")
    return data


def write_output(path: str | None, data: bytes, mode: int = FILE_MODE) -> None:
    """Writes stdout, or a file atomically with ``mode`` (0600 unless told otherwise)."""
    with open_output(path, mode) as out:
        view = memoryview(data)
        while view:  # the file is unbuffered: a write may take only part of the data
            view = view[out.write(view) :]


class Prefixed:
    """A source whose first bytes were already read (to tell a stream from an envelope)."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readinto(self, buffer: Any) -> int:
        """Fills ``buffer`` from the bytes read ahead first, then from the source."""
        if len(self._head):
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._rest.readinto(buffer) or 0


class _InputFile(io.FileIO):
    """The input file: a read that fails (an I/O error, a vanished mount) is a usage error.

    The stream code between the input and the output passes errors on as they are; failing
    here with our own type keeps an unreadable input from being reported as a failed output.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, "rb")
        self.path = path

    def readinto(self, buffer: Any, /) -> int:
        try:
            return super().readinto(buffer)
        except OSError as exc:
            raise unreadable(self.path, exc) from exc

    def read(self, size: int | None = -1, /) -> bytes:
        try:
            return super().read(size)
        except OSError as exc:
            raise unreadable(self.path, exc) from exc

    def readall(self) -> bytes:
        try:
            return super().readall()
        except OSError as exc:
            raise unreadable(self.path, exc) from exc


class Writable(Protocol):
    """Where output goes: a file or standard output."""

    def write(self, data: Any, /) -> int:
        """Writes some of ``data``; returns how much."""
        ...


class _Stdout:
    """Standard output, whose failing writes raise :class:`OutputError` (cause chained)."""

    def __init__(self) -> None:
        self._out = sys.stdout.buffer

    def write(self, data: Any, /) -> int:
        try:
            return self._out.write(data)
        except OSError as exc:
            raise OutputError(_stdout_failure(exc)) from exc

    def flush(self) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            raise OutputError(_stdout_failure(exc)) from exc


def _stdout_failure(exc: OSError) -> str:
    return f"cannot write standard output: {exc.strerror or type(exc).__name__}"


@contextlib.contextmanager
def open_input(path: str | None) -> Iterator[BinaryIO]:
    """stdin, or the file at ``path`` opened unbuffered (the stream code reads big runs)."""
    if path in (None, "-"):
        yield sys.stdin.buffer
        return
    try:
        f = _InputFile(path)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    with f:
        yield f


@contextlib.contextmanager
def open_output(path: str | None, mode: int = FILE_MODE) -> Iterator[Writable]:
    """stdout, or a file that appears under ``path`` only when the block succeeds.

    A regular file is written where nobody sees it (see ``atomic_output``) and gets ``mode``
    (0600 by default, whatever mode a replaced file had) before its name; on any error
    nothing is left behind and an existing file keeps its content.
    """
    if path in (None, "-"):
        out = _Stdout()
        yield out
        out.flush()
        return
    with atomic_output(path, mode=mode) as f:
        yield f


@contextlib.contextmanager
def byte_progress(total: int | None, desc: str) -> Iterator[Callable[[int], object] | None]:
    """A tqdm bar (bytes, rate, ETA) on a terminal; nothing when stderr is piped."""
    if not sys.stderr.isatty():
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:  # the cli extra is not installed: no bar
        yield None
        return
    bar = tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr
    )
    try:
        yield bar.update
    finally:
        bar.close()


def key_progress(total: int, desc: str) -> Any:
    """A tqdm bar counting keys, or None without tqdm (counts are printed at the end)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="key", file=sys.stderr)
