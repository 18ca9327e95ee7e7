"""Bounded retries of idempotent key-store work, for SQLite and PostgreSQL alike.

Its own module so that a process on the embedded SQLite store never imports the PostgreSQL
pool to retry a locked database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from greenlang_crypto.exceptions import KeyStoreUnavailableError

__all__ = ["retrying"]

T = TypeVar("T")


def retrying(
    fn: Callable[[], T],
    *,
    budget_seconds: float,
    first_delay: float = 0.05,
    max_delay: float = 1.0,
) -> T:
    """Calls ``fn`` until it does not raise :class:`KeyStoreUnavailableError`.

    Only for idempotent work (reads, upserts, monotonic counters). Backs off exponentially
    and gives up once ``budget_seconds`` have passed, re-raising the last error.
    """
    deadline = time.monotonic() + budget_seconds
    delay = first_delay
    while True:
        try:
            return fn()
        except KeyStoreUnavailableError:
            if time.monotonic() + delay >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
