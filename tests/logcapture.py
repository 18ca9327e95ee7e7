"""Shared helpers of the DEBUG-log tests (no key or plaintext in any log line): capture every
logger at DEBUG, and the encodings under which a secret could appear in a log line."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
from collections.abc import Iterator, Sequence


def encodings(secret: bytes) -> set[str]:
    """Hex (both cases), base64 (standard, URL-safe, a 20-character prefix), bytes repr and
    the raw text of ``secret``; forms shorter than 8 characters are dropped as noise."""
    forms = {
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
        # A long prefix catches truncated dumps.
        base64.b64encode(secret).decode()[:20],
    }
    with contextlib.suppress(UnicodeDecodeError):
        forms.add(secret.decode())
    return {f for f in forms if len(f) >= 8}


@contextlib.contextmanager
def capture_debug_logs(loggers: Sequence[str]) -> Iterator[io.StringIO]:
    """Routes every record of ``loggers`` (set to DEBUG) into a string buffer."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in loggers}
    root.addHandler(handler)
    for name in loggers:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
