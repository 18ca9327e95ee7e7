"""Private files and directories: the modes the library creates, whatever the umask.

Every directory the library creates for its data is 0700 and every file 0600. ``os.open`` and
``mkdir`` apply the process umask to the mode they are given, which can only remove bits, but a
permissive umask (000) is not the problem: an inherited file created by an older version or by
hand may be wider. So each helper sets the mode explicitly with ``chmod``/``fchmod`` (which the
umask does not affect) on what it creates.

Outputs (:func:`atomic_output`) and data directories (:func:`atomic_directory`) are also
never visible half made: a file is written as an anonymous ``O_TMPFILE`` inode and linked in
whole (or, where the file system has no ``O_TMPFILE``, under a temporary name that SIGTERM
and SIGHUP remove and a later run sweeps), a directory is built under a temporary name and
renamed. Plaintext written by a process that is killed mid-way is never left behind under a
name.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import shutil
import signal
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from greenlang_crypto.exceptions import ConfigurationError, OutputError

__all__ = [
    "OutputFile",
    "atomic_directory",
    "atomic_output",
    "check_private_dir",
    "create_once",
    "ensure_private_dir",
    "ensure_private_file",
    "open_private_append",
    "output_error",
    "regular_file_size",
    "sweep_stale_temporaries",
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


def create_once(path: str | os.PathLike[str], data: bytes) -> bool:
    """Creates ``path`` (0600) holding ``data``, whole, unless it exists; True if this call did.

    For a file several processes may create at once (a generated secret): the data is written
    and synced under a temporary name, then hard-linked to ``path``, which fails when another
    process got there first. A reader never sees the file empty or half written, and no
    process overwrites another's.
    """
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, target)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


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


def regular_file_size(src: object) -> int | None:
    """The bytes left in ``src`` when it is a regular file (known before reading), else None.

    Pipes, terminals, sockets and objects without a descriptor have no size to know.
    """
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
    except (OSError, ValueError, io.UnsupportedOperation):
        pos = 0
    return max(0, st.st_size - pos)


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


#: Try ``O_TMPFILE`` (an anonymous file, linked in only when complete) before a named temporary
#: file. Set to False to take the portable path everywhere (a file system that misreports
#: its support, or a test of that path).
USE_TMPFILE = True

#: A temporary file or directory of ours that nobody touched for this long was left by a run
#: that died without cleaning up (SIGKILL, a power cut); the next run in that directory
#: removes it. A live writer touches its file with every write.
STALE_SECONDS = 3600.0

# The names of our temporaries: ``.<name>.glc-<pid>-<16 hex>.tmp`` for an output file and
# ``.<name>.glc-init-<pid>-<16 hex>`` for a directory being built. The sweep removes nothing
# else, and only what the current user owns.
_TEMP_FILE = re.compile(r"\..*\.glc-[0-9]+-[0-9a-f]{16}\.tmp", re.DOTALL)
_TEMP_DIR = re.compile(r"\..*\.glc-init-[0-9]+-[0-9a-f]{16}", re.DOTALL)
# A name is at most 255 bytes: the part of the final name kept in a temporary name is cut.
_NAME_KEPT = 96

# Directories of file descriptors: /proc/<pid>/fd, /proc/<pid>/task/<tid>/fd (and what
# /proc/self, /proc/thread-self and /dev/fd resolve to).
_FD_DIR = re.compile(r"/proc/([0-9]+)(?:/task/[0-9]+)?/fd")


def _temp_name(name: str, kind: str = "") -> str:
    token = f"{os.getpid()}-{secrets.token_hex(8)}"
    if kind == "dir":
        return f".{name[:_NAME_KEPT]}.glc-init-{token}"
    return f".{name[:_NAME_KEPT]}.glc-{token}.tmp"


# -- signals -------------------------------------------------------------------------------
#
# A named temporary file holds plaintext while it is written. SIGTERM and SIGHUP end a
# process without running ``finally`` blocks, so a handler removes every temporary still
# being written before the signal takes its course. An anonymous file (O_TMPFILE) needs none
# of this: the kernel frees it with the last descriptor, whatever killed the process.

_pending: dict[str, str] = {}  # absolute path -> "file" or "dir", in creation order
_pending_lock = threading.Lock()
_chained: dict[int, Any] = {}  # signal -> the disposition our handler replaced


def _register(path: str, kind: str) -> None:
    with _pending_lock:
        _pending[path] = kind
    _install_cleanup()


def _unregister(path: str) -> None:
    with _pending_lock:
        _pending.pop(path, None)


def _install_cleanup() -> None:
    """Puts the clean-up handler in front of SIGTERM and SIGHUP (main thread only).

    Python lets only the main thread set handlers; from another thread the temporary is
    still removed by the next run's sweep. A signal the process ignores stays ignored (a
    ``nohup`` run must survive its terminal closing), and a handler the application set
    runs after ours.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signum in _chained:
            continue
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN or previous is None:
            continue
        signal.signal(signum, _remove_pending_then_chain)
        _chained[signum] = previous


def _remove_pending(kinds: Mapping[str, str]) -> None:
    for path, kind in kinds.items():
        if kind == "dir":
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _remove_pending_then_chain(signum: int, frame: FrameType | None) -> None:
    # No lock here: the handler runs on the main thread between two bytecodes, possibly
    # while that same thread holds the lock. Copying the dict is atomic under the GIL.
    _remove_pending(dict(_pending))
    previous = _chained.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    # The default action (terminate): restore it and deliver the signal again, so the
    # process ends as the sender asked and its parent sees the signal, not an exit code.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# -- stale temporaries ---------------------------------------------------------------------


def sweep_stale_temporaries(
    directory: str | os.PathLike[str] | int, *, older_than: float = STALE_SECONDS
) -> list[str]:
    """Removes the temporaries a dead run of ours left in ``directory``; returns their names.

    Only names of our pattern (``.<name>.glc-<pid>-<hex>.tmp`` files, ``.<name>.glc-init-
    <pid>-<hex>`` directories), owned by the current user and untouched for ``older_than``
    seconds. Best effort: an entry that cannot be removed is left (and not listed).

    Args:
        directory: A path or an open directory descriptor.
        older_than: Seconds since the last modification.
    """
    removed: list[str] = []
    now = time.time()
    dir_fd = directory if isinstance(directory, int) else None
    try:
        entries = os.scandir(directory)
    except OSError:
        return removed
    with entries:
        for entry in entries:
            is_file = _TEMP_FILE.fullmatch(entry.name) is not None
            if not is_file and _TEMP_DIR.fullmatch(entry.name) is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if st.st_uid != os.geteuid() or now - st.st_mtime < older_than:
                    continue
                where = entry.name if dir_fd is not None else entry.path
                if is_file and stat.S_ISREG(st.st_mode):
                    os.unlink(where, dir_fd=dir_fd)
                elif not is_file and stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(where, dir_fd=dir_fd)
                else:
                    continue
            except OSError:
                continue
            removed.append(entry.name)
    return removed


# -- outputs -------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, mode: int = FILE_MODE) -> Iterator[OutputFile]:
    """A file that appears under ``path`` only when the block succeeds, whole, with ``mode``.

    A regular file (or a new name) is written where no other process can see it: an
    anonymous file (``O_TMPFILE``) in the target's directory, which is linked in only once
    the block succeeded and the data is synced, then renamed over ``path``. Where the file
    system has no ``O_TMPFILE`` a named temporary (``.<name>.glc-<pid>-<hex>.tmp``, mode 0600)
    is used instead; SIGTERM and SIGHUP remove it (see :func:`_install_cleanup`), and what a
    SIGKILL leaves is removed by the next output into that directory once it is
    :data:`STALE_SECONDS` old. Either way the file gets ``mode`` (default 0600) before it has
    its final name, whatever the umask and whatever mode a replaced file had. A symbolic link
    to a regular file is replaced itself, as a rename does: the file it points to stays as
    it was.

    A device, FIFO or socket (also behind a symbolic link) is written in place: renaming over
    it would put a plain file where a reader expects the device (``-o /dev/stdout`` would
    silently go nowhere, and a root user would replace ``/dev/null`` for the whole system).
    A descriptor link (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``) writes to that
    descriptor of this process, at its offset, whatever it is open on. In place, what was
    written before a failure stays written: the reader sees a stream, not a file.

    Exceptions raised in the block pass through unchanged (after the clean-up), so an error
    of the caller's own input is not taken for an output error.

    Args:
        path: The output.
        mode: The permission bits of a file written by rename (0..0o777).

    Raises:
        OutputError: Creating, writing, syncing, linking or renaming failed (disk full,
            permission denied, a read-only file system, a missing directory...); the
            ``OSError`` is chained as ``__cause__``.
        ValueError: ``mode`` has bits beyond the permission bits.
    """
    if mode & ~0o777:
        raise ValueError("mode takes permission bits only (0..0o777)")
    target = Path(path)
    descriptor = _descriptor_link(os.fspath(target))
    if descriptor is not None:
        with _in_place(target, descriptor) as f:
            yield f
        return
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise output_error(target, exc) from exc
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {target}: it is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        with _in_place(target, None) as f:
            yield f
        return
    with _replacing(target, mode) as f:
        yield f


def _descriptor_link(path: str) -> int | str | None:
    """Where ``path`` leads when its symbolic links end at a descriptor link.

    Returns the descriptor number for one of this process's own descriptors (written through
    a duplicate, at its offset), the path of another process's descriptor link (opened),
    else None.
    """
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on nested links
        parent, leaf = os.path.split(current)
        if leaf.isdigit():
            found = _FD_DIR.fullmatch(os.path.realpath(parent))
            if found is not None:
                return int(leaf) if int(found.group(1)) == os.getpid() else current
        try:
            link = os.readlink(current)
        except OSError:  # not a link (or absent): no descriptor behind it
            return None
        current = os.path.join(parent, link)
    return None


@contextlib.contextmanager
def _replacing(target: Path, mode: int) -> Iterator[OutputFile]:
    """The rename path of :func:`atomic_output` (a regular file or a new name)."""
    name = target.name
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise output_error(target, exc) from exc
    try:
        sweep_stale_temporaries(dir_fd)
        fd, temp = _open_hidden(dir_fd, target)
        f = OutputFile(fd, target)
        try:
            yield f
        except BaseException:
            _abandon(f, dir_fd, temp, target)
            raise
        try:
            _publish(f, dir_fd, temp, name, mode)
        except OSError as exc:
            _abandon(f, dir_fd, temp, target)
            raise output_error(target, exc) from exc
        if temp is not None:
            _unregister(_absolute(target.parent, temp))
    finally:
        os.close(dir_fd)


def _absolute(directory: Path, name: str) -> str:
    return os.path.join(os.path.abspath(directory), name)


def _open_hidden(dir_fd: int, target: Path) -> tuple[int, str | None]:
    """A private file beside ``target``: anonymous (``None``) if possible, else named."""
    # Linking an anonymous file goes through /proc/self/fd; without /proc it could never
    # get a name, so the named temporary is used from the start.
    if USE_TMPFILE and hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
        except OSError as exc:
            # No O_TMPFILE on this file system (or this kernel, which then reports EISDIR):
            # take the named path. Anything else (full, read-only, denied) is the answer.
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise output_error(target, exc) from exc
        else:
            return _private(fd, target), None
    while True:
        temp = _temp_name(target.name)
        where = _absolute(target.parent, temp)
        # Registered before it exists, so a signal right after the open still removes it.
        _register(where, "file")
        try:
            fd = os.open(
                temp,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                FILE_MODE,
                dir_fd=dir_fd,
            )
        except FileExistsError:
            _unregister(where)  # someone else's: not ours to remove
            continue
        except OSError as exc:
            _unregister(where)
            raise output_error(target, exc) from exc
        try:
            return _private(fd, target), temp
        except OutputError:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            _unregister(where)
            raise


def _private(fd: int, target: Path) -> int:
    # The umask may have taken bits off 0600; the file must stay ours alone while written.
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError as exc:
        os.close(fd)
        raise output_error(target, exc) from exc
    return fd


def _publish(f: OutputFile, dir_fd: int, temp: str | None, name: str, mode: int) -> None:
    """Syncs ``f``, gives it ``mode`` and its final name (anonymous: linked in first)."""
    fd = f.fileno()
    os.fsync(fd)
    os.fchmod(fd, mode)  # before the final name exists: never visible with another mode
    linked = temp
    try:
        if linked is None:
            linked = _link_anonymous(fd, dir_fd, name)
        os.replace(linked, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        if linked is not None and linked != temp:
            with contextlib.suppress(OSError):
                os.unlink(linked, dir_fd=dir_fd)
        raise
    f.close()  # may report a deferred write error (network file systems)
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)  # the rename itself survives a crash


def _link_anonymous(fd: int, dir_fd: int, name: str) -> str:
    """Gives the complete anonymous file a temporary name beside ``name``; returns it.

    ``linkat`` cannot replace a name, so the file is linked under a fresh temporary name
    and then renamed over the target. CPython calls ``link(2)``, which does not follow the
    /proc link, unless a directory descriptor is given: hence ``dst_dir_fd``.
    """
    while True:
        temp = _temp_name(name)
        try:
            os.link(f"/proc/self/fd/{fd}", temp, dst_dir_fd=dir_fd, follow_symlinks=True)
        except FileExistsError:
            continue
        return temp


def _abandon(f: io.FileIO, dir_fd: int, temp: str | None, target: Path) -> None:
    """Closes ``f`` and removes its temporary name, keeping whatever error is on its way."""
    with contextlib.suppress(OSError):
        f.close()
    if temp is not None:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        _unregister(_absolute(target.parent, temp))


@contextlib.contextmanager
def _in_place(target: Path, descriptor: int | str | None) -> Iterator[OutputFile]:
    """Writes a device, FIFO, socket or descriptor as it is (no temporary file, no fsync)."""
    try:
        if isinstance(descriptor, int):
            fd = os.dup(descriptor)
        else:
            # O_NOCTTY: a terminal written to must not become this process's controlling one.
            fd = os.open(
                target if descriptor is None else descriptor,
                os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY,
            )
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


# -- directories ---------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A private directory that appears under ``path`` only when the block succeeds, whole.

    The block fills a temporary directory beside ``path`` (``.<name>.glc-init-<pid>-<hex>``,
    0700); when it succeeds, every file in it is synced and the directory is renamed to
    ``path`` (which may exist as an empty directory, replaced by the rename). On any error,
    or on SIGTERM or SIGHUP, the temporary directory is removed; after a SIGKILL the next
    run in the parent directory removes it. Missing parents are created 0700 (existing ones
    are left as they are).

    Raises:
        FileExistsError: ``path`` exists and is not empty at the rename (another process
            finished first); the temporary directory is removed.
        OutputError: Creating, syncing or renaming failed (the ``OSError`` chained).
    """
    target = Path(path)
    try:
        _make_parents(target.parent)
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise output_error(target, exc) from exc
    try:
        sweep_stale_temporaries(dir_fd)
        while True:
            temp = _temp_name(target.name, "dir")
            where = _absolute(target.parent, temp)
            _register(where, "dir")
            try:
                os.mkdir(temp, DIR_MODE, dir_fd=dir_fd)
                os.chmod(temp, DIR_MODE, dir_fd=dir_fd)
            except FileExistsError:
                _unregister(where)
                continue
            except OSError as exc:
                _unregister(where)
                raise output_error(target, exc) from exc
            break
        try:
            yield Path(where)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True, dir_fd=dir_fd)
            _unregister(where)
            raise
        try:
            _sync_tree(where)
            os.rename(temp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            shutil.rmtree(temp, ignore_errors=True, dir_fd=dir_fd)
            _unregister(where)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(exc.errno, f"{target} exists and is not empty") from exc
            raise output_error(target, exc) from exc
        _unregister(where)
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _make_parents(directory: Path) -> None:
    """Creates the missing ``directory`` and parents 0700; existing ones stay as they are.

    Unlike :func:`ensure_private_dir`, an existing directory is never tightened: the parent
    of a data directory is often a home directory or a shared one.
    """
    missing: list[Path] = []
    cur = directory
    while not cur.exists() and cur.parent != cur:
        missing.append(cur)
        cur = cur.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
            os.chmod(d, DIR_MODE)


def _sync_tree(root: str) -> None:
    """Syncs every file and directory under ``root`` (the rename must not outrun them)."""
    for directory, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
