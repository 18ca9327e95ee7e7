"""How the CLI fails: one ``error:`` line on stderr and an exit code that tells why.

2: a usage or typed error to fix; 3: an outage a later run may not meet; 130: interrupted
(128 + SIGINT, as a shell reports it). A command's own failed check (1) is its return value.
Warnings the library logs on the way stay one line each; ``--debug`` adds tracebacks.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

from greenlang_crypto.exceptions import (
    AuditSinkUnavailableError,
    GreenlangCryptoError,
    KeyStoreUnavailableError,
    KmsUnavailableError,
    OutputError,
    UnavailableError,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_RETRY_LATER",
    "cli_logging",
    "database_outage",
    "exit_code",
    "fail",
    "one_line",
    "print_traceback",
    "quiet_hooks",
    "report",
    "stray_os_error",
]

#: Exit codes besides 0 and 1 (a check failed, which the commands return themselves): a
#: usage or typed error, an outage a later run may not meet, interrupted (128 + SIGINT, as a
#: shell reports it). The README's "Exit codes" lists them for scripts and schedulers.
EXIT_ERROR = 2
EXIT_RETRY_LATER = 3
EXIT_INTERRUPTED = 130

#: errno values that only a write reports: a stray OSError carrying one is an output error.
_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EPIPE, errno.ETXTBSY}
)


def exit_code(exc: GreenlangCryptoError) -> int:
    """3 when the same command may succeed later (a dependency is down), else 2."""
    if isinstance(exc, UnavailableError | KmsUnavailableError | AuditSinkUnavailableError):
        # A sink that is up but refuses the values is no outage: rerunning cannot help.
        # Looked up only when loaded: if the audit package never ran, the error is not its.
        base = sys.modules.get("greenlang_crypto.audit.sinks.base")
        rejected = getattr(base, "AuditRecordRejectedError", None)
        if rejected is not None and isinstance(exc, rejected):
            return EXIT_ERROR
        return EXIT_RETRY_LATER
    return EXIT_ERROR


def one_line(text: str) -> str:
    """``text`` on one line (its non-blank lines joined by spaces)."""
    # A message from a lower layer may span lines; the CLI promises one line per error.
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def fail(message: str, code: int) -> int:
    """Prints ``error: message`` on one line and returns ``code``."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    _settle_stdout()
    return code


def report(exc: GreenlangCryptoError) -> int:
    """Prints a typed error (its class and message) and returns its exit code."""
    # Typed errors carry no secrets by construction; print the class and message only (the
    # chained cause, a driver's own text, is never printed).
    text = one_line(str(exc))
    return fail(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, exit_code(exc))


def _settle_stdout() -> None:
    """Points a broken stdout at the null device, so the exit flush adds no second message.

    A closed pipe or a full disk behind stdout would otherwise make the interpreter print
    its own "Exception ignored" lines after ours.
    """
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def stray_os_error(exc: OSError) -> int:
    """The line and exit code for an OSError that no helper typed.

    An output error when only a write fails so, an outage when a connection failed, else a
    usage error naming the file.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
    error: GreenlangCryptoError
    if isinstance(exc, BrokenPipeError) or exc.errno in _WRITE_ERRNOS:
        error = OutputError(f"cannot write {where}{reason}")
    elif isinstance(exc, ConnectionError | TimeoutError):
        # Refused, reset or timed out: a service the command needs is down right now.
        error = UnavailableError(f"a service is unreachable ({type(exc).__name__}); retry later")
    else:
        return fail(f"{where}{reason}", EXIT_ERROR)
    error.__cause__ = exc
    return report(error)


class _OneLineWarnings(logging.Handler):
    """Log records as ``warning: ...`` lines on the current stderr, without tracebacks.

    The command's own failure is the one ``error:`` line main() prints; what the library
    logs on the way (an audit sink down at start, say) stays a single line beside it. With
    ``--debug`` a record's traceback follows its line.
    """

    def __init__(self, level: int, debug: bool = False) -> None:
        super().__init__(level)
        self.debug = debug

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"warning: {one_line(record.getMessage())}", file=sys.stderr)
            if self.debug and record.exc_info:
                traceback.print_exception(*record.exc_info, file=sys.stderr)
        except Exception:  # a log line must never be what fails the command
            self.handleError(record)


def cli_logging(command: str | None, debug: bool = False) -> None:
    """Sets up logging for a one-shot command, unless the process already has its own.

    ``serve`` is left to uvicorn's configuration: a server's logs belong to its operator.
    The database drivers' own retries (a pool reconnecting, each attempt a multi-line
    warning) are silenced: their outcome is the typed error the command reports.
    """
    root = logging.getLogger()
    if command == "serve" or root.handlers:
        return
    root.addHandler(_OneLineWarnings(logging.WARNING, debug))
    for name in ("psycopg", "psycopg_pool", "psycopg.pool"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def database_outage(exc: Exception) -> GreenlangCryptoError | None:
    """The typed error for a raw database error that reached the CLI, if it is an outage.

    The stores type their own failures; this is the backstop for one that slipped through
    (a connection pool timing out, a SQLite file locked past its timeout). The drivers are
    looked up only when loaded: a driver never imported cannot have raised, and psycopg and
    SQLAlchemy are optional.
    """
    for module, make in (
        ("psycopg", KeyStoreUnavailableError),
        ("sqlite3", KeyStoreUnavailableError),
        ("sqlalchemy.exc", UnavailableError),
    ):
        cls = getattr(sys.modules.get(module), "OperationalError", None)
        if isinstance(cls, type) and isinstance(exc, cls):
            error: GreenlangCryptoError = make(
                f"the database is unreachable or busy ({type(exc).__name__}); retry later"
            )
            error.__cause__ = exc
            return error
    return None


@contextlib.contextmanager
def quiet_hooks(debug: bool) -> Iterator[None]:
    """Without ``--debug``, errors the interpreter reports itself stay one line too.

    An exception ending a thread, or raised where nobody can catch it (a finalizer), is
    printed with its traceback by default; a traceback can quote a driver's message.
    """
    if debug:
        yield
        return
    saved_thread, saved_unraisable = threading.excepthook, sys.unraisablehook

    def thread_hook(hook_args: Any) -> None:
        if hook_args.exc_type is SystemExit:
            return
        name = getattr(hook_args.thread, "name", "a thread")
        print(f"warning: {hook_args.exc_type.__name__} in {name}", file=sys.stderr)

    def unraisable_hook(hook_args: Any) -> None:
        print(f"warning: {hook_args.exc_type.__name__} ignored", file=sys.stderr)

    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
    try:
        yield
    finally:
        threading.excepthook, sys.unraisablehook = saved_thread, saved_unraisable


def print_traceback(debug: bool) -> None:
    """Prints the traceback being handled, with ``--debug`` only."""
    if debug:
        traceback.print_exc(file=sys.stderr)
