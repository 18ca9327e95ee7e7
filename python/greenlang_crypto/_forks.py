"""Per-process state after ``os.fork()``.

A forked child inherits the parent's objects but none of its other threads, and shares every
open connection's socket with the parent. So an object that owns a background thread, a lock
another thread may hold, or a database connection registers here, and after a fork the child
re-arms it: fresh locks, its own connections (the parent's are dropped, never used; psycopg
does not end a session from a process other than the one that opened it), and its own
threads. An object whose only per-process state is a lock names it in
:func:`fresh_locks_after_fork` instead. Without this a web server that forks workers after
loading the app (gunicorn ``--preload``, Celery's prefork pool) would run workers that never
see a key rotation and that write audit records and key-store rows over the parent's
connections.

Objects are re-armed in phases, stores before the objects that use them.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, Protocol

_log = logging.getLogger(__name__)

#: Phases, in the order they run in the child.
STORE = 0
KEYRING = 1
AUDIT = 2

_registered: tuple[weakref.WeakSet[Any], ...] = (
    weakref.WeakSet(),
    weakref.WeakSet(),
    weakref.WeakSet(),
)


class ForkAware(Protocol):
    """What :func:`register` takes: an object that re-arms itself in a forked child."""

    def _after_fork_in_child(self) -> None: ...


def register(obj: ForkAware, phase: int) -> None:
    """Re-arms ``obj`` in every forked child (held weakly: registering keeps nothing alive)."""
    _registered[phase].add(obj)


#: Objects (or modules) whose lock attributes are replaced in a forked child, with the names.
_lock_owners: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()


def fresh_locks_after_fork(owner: Any, *names: str) -> None:
    """Gives ``owner`` new, unlocked ``threading.Lock`` objects under ``names`` in a forked child.

    For objects whose only per-process state is a lock: a parent thread that held it at the
    moment of the fork does not exist in the child, so the child's copy would stay locked and
    the first call that takes it would hang. Held weakly; a module can be an owner too.
    """
    _lock_owners[owner] = names


def clear_http_pools(client: Any) -> None:
    """Closes, in this child only, the keep-alive connections a botocore client inherited.

    A socket shared with the parent would interleave both processes' requests; closing the
    child's descriptor leaves the parent's connection as it is (no TLS close is sent).
    """
    manager = getattr(
        getattr(getattr(client, "_endpoint", None), "http_session", None), "_manager", None
    )
    clear = getattr(manager, "clear", None)
    if callable(clear):
        clear()


def _after_fork_in_child() -> None:
    # Locks first: the re-arming below may go through objects that take them.
    for owner, names in list(_lock_owners.items()):
        for name in names:
            setattr(owner, name, threading.Lock())
    for objects in _registered:
        for obj in list(objects):
            try:
                obj._after_fork_in_child()
            except Exception as exc:  # a fork must never fail because of us
                _log.warning(
                    "re-arming %s after fork failed: %s", type(obj).__name__, type(exc).__name__
                )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
