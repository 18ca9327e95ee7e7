"""The dead-letter file: records the sink refused, and what a shutdown could not flush.

Each line is one JSON object: the entry's fields plus ``why`` (``rejected``: the sink refused
the record's values; ``pending``: the sink was down at shutdown). Pending entries go to a file
of their own beside the dead-letter (:func:`pending_path`), which the next start reads back
(:func:`take_pending`) and replays, so an outage at shutdown loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from greenlang_crypto._files import open_private_append
from greenlang_crypto.audit.records import AuditEntry, entry_from_dict, entry_to_dict

__all__ = ["append_dead_letter", "pending_path", "take_pending"]

_log = logging.getLogger("greenlang_crypto.audit")


def pending_path(dead_letter: Path) -> Path:
    """Where shutdown saves unflushed entries: ``<dead_letter>.pending``."""
    return dead_letter.with_name(dead_letter.name + ".pending")


def append_dead_letter(path: Path, entries: Sequence[AuditEntry], why: str) -> bool:
    """Appends ``entries`` to ``path`` (created 0600, fsynced); whether they were stored.

    An unwritable file is logged, never raised: the caller is reporting a failure already.
    """
    if not entries:
        return False
    lines = b"".join(
        (json.dumps({"why": why, **entry_to_dict(e)}, sort_keys=True) + "\n").encode()
        for e in entries
    )
    try:
        fd = open_private_append(path)
        try:
            os.write(fd, lines)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _log.error("audit dead-letter %s unwritable (%s)", path, type(exc).__name__)
        return False
    return True


def take_pending(dead_letter: Path) -> list[AuditEntry]:
    """Reads and removes the entries an earlier shutdown saved; unreadable lines are skipped."""
    path = pending_path(dead_letter)
    try:
        data = path.read_bytes()
    except OSError:
        return []
    pending: list[AuditEntry] = []
    for line in data.splitlines():
        try:
            pending.append(entry_from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    with contextlib.suppress(OSError):
        path.unlink()
    return pending
