"""No data key in botocore's DEBUG logs: a logging filter that scrubs ``Plaintext`` values.

KMS answers to GenerateDataKey and Decrypt carry the data key, base64-encoded, in a
``Plaintext`` field, and botocore logs request parameters and response bodies at DEBUG. An
application that turns DEBUG on (or a root handler at DEBUG) would otherwise write every data
key it receives to its logs. :func:`install_botocore_log_redaction` puts a
:class:`PlaintextRedactingFilter` on each botocore logger; the KMS provider calls it when it is
constructed.

This module imports neither boto3 nor botocore: it touches loggers by name only.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Final

from greenlang_crypto import _forks

__all__ = [
    "BOTOCORE_BODY_LOGGERS",
    "REDACTED",
    "PlaintextRedactingFilter",
    "install_botocore_log_redaction",
    "redact",
]

#: What a ``Plaintext`` value is replaced with.
REDACTED: Final = "***REDACTED***"

#: botocore loggers that log request parameters or response bodies. Filters attached to a
#: parent logger do not see records created by its children, so each gets its own filter.
BOTOCORE_BODY_LOGGERS: Final = (
    "botocore",
    "botocore.parsers",
    "botocore.endpoint",
    "botocore.hooks",
    "botocore.client",
    "botocore.httpsession",
    "botocore.awsrequest",
    "botocore.retryhandler",
    "botocore.retries.standard",
    "botocore.history",
)

# A Plaintext field as JSON ("Plaintext": "...") or in a Python dict repr ('Plaintext': b'...'),
# the value being a quoted literal that may contain backslash escapes.
_PLAINTEXT_LITERAL_RE: Final = re.compile(
    r"""(["']Plaintext["']\s*:\s*)(b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*")""", re.DOTALL
)
# The same JSON inside a repr that escaped its double quotes: \"Plaintext\": \"...\".
_PLAINTEXT_ESCAPED_RE: Final = re.compile(r"""(\\["']Plaintext\\["']\s*:\s*\\["'])[^"'\\]*""")


def redact(text: str) -> str:
    """``text`` with the value of every ``Plaintext`` field replaced by :data:`REDACTED`.

    Recognises the field in JSON, in a Python dict repr (``str`` or ``bytes`` value) and in
    JSON whose quotes a repr escaped; anything else in ``text`` is left as it is.
    """
    text = _PLAINTEXT_LITERAL_RE.sub(lambda m: f"{m.group(1)}'{REDACTED}'", text)
    return _PLAINTEXT_ESCAPED_RE.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


class PlaintextRedactingFilter(logging.Filter):
    """Rewrites log records so that no ``Plaintext`` value (a KMS data key) survives.

    The record's message is formatted once, redacted, and stored back with empty ``args``, so
    handlers see only the redacted text. Records without the word ``Plaintext`` are untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redacts ``record`` in place; always lets it through."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's problem, not ours
            return True
        if "Plaintext" in message:
            record.msg = redact(message)
            record.args = None
        return True


_FILTER_LOCK = threading.Lock()
_forks.fresh_locks_after_fork(sys.modules[__name__], "_FILTER_LOCK")
_FILTER: Final = PlaintextRedactingFilter()


def install_botocore_log_redaction() -> None:
    """Installs the redacting filter on every botocore logger (idempotent, thread-safe).

    Covers the loggers that exist now plus the known body-logging ones, so it should be called
    after botocore modules are imported (constructing a provider does this).
    """
    with _FILTER_LOCK:
        names = set(BOTOCORE_BODY_LOGGERS)
        for name, obj in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(obj, logging.Logger) and (
                name == "botocore" or name.startswith("botocore.")
            ):
                names.add(name)
        for name in sorted(names):
            logger = logging.getLogger(name)
            if not any(isinstance(f, PlaintextRedactingFilter) for f in logger.filters):
                logger.addFilter(_FILTER)
