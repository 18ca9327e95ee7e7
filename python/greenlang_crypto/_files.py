"""Private files and directories: the modes the library creates, whatever the umask.

Every directory the library creates for its data is 0700 and every file 0600. ``os.open`` and
``mkdir`` apply the process umask to the mode they are given, which can only remove bits, but a
permissive umask (000) is not the problem: an inherited file created by an older version or by
hand may be wider. So each helper sets the mode explicitly with ``chmod``/``fchmod`` (which the
umask does not affect) on what it creates.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from greenlang_crypto.exceptions import ConfigurationError

__all__ = [
    "check_private_dir",
    "ensure_private_dir",
    "ensure_private_file",
    "open_private_append",
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
