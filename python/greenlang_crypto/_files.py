"""Private files and directories: the modes the library creates, whatever the umask.

Every directory the library creates for its data is 0700 and every file 0600. ``os.open`` and
``mkdir`` apply the process umask to the mode they are given, which can only remove bits, but a
permissive umask (000) is not the problem: an inherited file created by an older version or by
hand may be wider. So each helper sets the mode explicitly with ``chmod``/``fchmod`` (which the
umask does not affect) on what it creates.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from greenlang_crypto.exceptions import ConfigurationError, OutputError

__all__ = [
    "OutputFile",
    "atomic_output",
    "check_private_dir",
    "ensure_private_dir",
    "ensure_private_file",
    "open_private_append",
    "output_error",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Creates ``path`` (and missing parents) as 0700; tightens it when we own it.

    Parents the library creates are 0700 too. An existing directory owned by someone else is
    left as it is (the owner-check in :func:`check_private_dir` decides whether it is usable).
    """
    p = Path(path)
    missing: list[Path] = []
    cur = p
    while not cur.exists():
        missing.append(cur)
        if cur.parent == cur:
            break
        cur = cur.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
        with contextlib.suppress(OSError):
            os.chmod(d, DIR_MODE)
    if not missing:
        with contextlib.suppress(OSError):
            st = p.stat()
            if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(p, DIR_MODE)
    return p


def ensure_private_file(path: str | os.PathLike[str]) -> Path:
    """Creates ``path`` empty as 0600 unless it exists; makes our own file 0600 either way.

    Used before handing a path to a library that creates files with 0666 & ~umask (SQLite);
    SQLite then gives its ``-wal`` and ``-shm`` files the database file's mode.
    """
    p = Path(path)
    ensure_private_dir(p.parent)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return p


def open_private_append(path: str | os.PathLike[str]) -> int:
    """Opens ``path`` for appending (created 0600 if absent) and returns the descriptor."""
    p = Path(path)
    ensure_private_dir(p.parent)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def check_private_dir(path: str | os.PathLike[str], what: str = "directory") -> None:
    """Refuses a directory another user owns or others can write.

    Whoever can write the directory can swap the files in it (a master key, for example),
    whatever the files' own modes say.

    Raises:
        ConfigurationError: ``path`` is not owned by the current user, or is group- or
            world-writable.
    """
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        raise ConfigurationError(f"{what} {path} is not owned by the current user")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise ConfigurationError(
            f"{what} {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); chmod 700 it"
        )


def output_error(path: str | os.PathLike[str], exc: OSError) -> OutputError:
    """The :class:`OutputError` for a failed write of ``path`` (the caller chains ``exc``).

    Only the path and the system's short reason are named: never any of the data.
    """
    return OutputError(f"cannot write {os.fspath(path)}: {exc.strerror or type(exc).__name__}")


class OutputFile(io.FileIO):
    """An unbuffered file whose failing writes raise :class:`OutputError`, cause chained.

    Callers that also read an input can then tell a full or read-only destination from an
    unreadable source, whatever code between them sees the error first.

    Args:
        fd: An open descriptor, closed with the file.
        path: The name reported in errors (the final name, not a temporary one).
    """

    def __init__(self, fd: int, path: str | os.PathLike[str]) -> None:
        super().__init__(fd, "wb", closefd=True)
        self.path = Path(path)

    def write(self, data: Any, /) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            raise output_error(self.path, exc) from exc


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[OutputFile]:
    """A file that appears under ``path`` only when the block succeeds, whole.

    A regular file (or no file) is written to a temporary file beside ``path``: created with
    ``O_EXCL`` and mode 0600 whatever the umask, fsync'd, given the mode the replaced file had
    (0600 for a new one), and renamed over ``path`` (the same file system, so the rename is
    atomic). On any error the temporary file is removed and ``path`` is left as it was.

    A device, FIFO or socket is written in place instead: renaming over it would put a plain
    file where a reader expects the device (``-o /dev/stdout`` would silently go nowhere, and
    a root user would replace ``/dev/null`` for the whole system).

    Exceptions raised in the block pass through unchanged (after the clean-up), so an error
    of the caller's own input is not taken for an output error.

    Raises:
        OutputError: Creating, writing, syncing or renaming failed (disk full, permission
            denied, a read-only file system, a missing directory...); the ``OSError`` is
            chained as ``__cause__``.
    """
    target = Path(path)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise output_error(target, exc) from exc
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {target}: it is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        with _in_place(target) as f:
            yield f
        return
    mode = FILE_MODE if st is None else stat.S_IMODE(st.st_mode)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise output_error(target, exc) from exc
    f = OutputFile(fd, target)
    try:
        yield f
    except BaseException:
        _discard(f, tmp)
        raise
    try:
        os.fsync(f.fileno())
        f.close()  # may report a deferred write error (network file systems)
        os.chmod(tmp, mode)  # the umask does not apply to chmod
        os.replace(tmp, target)
    except OSError as exc:
        _discard(f, tmp)
        raise output_error(target, exc) from exc


@contextlib.contextmanager
def _in_place(target: Path) -> Iterator[OutputFile]:
    """Writes an existing device, FIFO or socket as it is (no temporary file, no fsync)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise output_error(target, exc) from exc
    f = OutputFile(fd, target)
    try:
        yield f
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        raise
    try:
        f.close()
    except OSError as exc:
        raise output_error(target, exc) from exc


def _discard(f: io.FileIO, tmp: Path) -> None:
    """Closes ``f`` and removes the temporary file, keeping whatever error is on its way."""
    with contextlib.suppress(OSError):
        f.close()
    with contextlib.suppress(OSError):
        tmp.unlink()
