"""Key-name globs with the exact semantics of Redis ``MATCH`` / ``KEYS``.

Python's :mod:`fnmatch` is not Redis's glob: it negates a class with ``!`` where Redis uses
``^``, treats a backslash as a literal, and counts characters where Redis counts bytes. A
wrapper that decides which values to encrypt by a pattern must agree with Redis on every key,
or a key Redis matches is stored in plaintext. So the pattern is parsed here the way Redis
parses it (byte by byte, with its escapes, ranges and negation) into one byte-level regular
expression, and a pattern whose Redis meaning depends on reading past its end (an unterminated
``[``) is refused: fail closed rather than guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from greenlang_crypto.exceptions import ConfigurationError

__all__ = ["compile_redis_glob"]

_STAR, _QUESTION, _OPEN, _CLOSE, _BACKSLASH, _CARET, _DASH = b"*?[]\\^-"


def _class_bytes(pattern: bytes, start: int) -> tuple[frozenset[int], int]:
    """The byte set of the class opening at ``pattern[start] == '['`` and the index after it."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] == _CARET
    if negate:
        i += 1
    members: set[int] = set()
    while True:
        if i >= len(pattern):
            # Redis steps back and reads the class as ending here, a meaning no user intends.
            raise ConfigurationError("unterminated '[' in a Redis key pattern")
        c = pattern[i]
        if c == _BACKSLASH and len(pattern) - i >= 2:
            members.add(pattern[i + 1])
            i += 2
        elif c == _CLOSE:
            i += 1
            break
        elif len(pattern) - i >= 3 and pattern[i + 1] == _DASH:
            # Redis takes any "x-y" as a range, reversed ones too, even when y is ']'.
            low, high = sorted((c, pattern[i + 2]))
            members.update(range(low, high + 1))
            i += 3
        else:
            members.add(c)
            i += 1
    chosen = frozenset(range(256)).difference(members) if negate else frozenset(members)
    return chosen, i


def _class_regex(chosen: frozenset[int]) -> bytes:
    if not chosen:
        return b"(?!)"  # matches no byte: the pattern can match no key
    if len(chosen) == 256:
        return b"."
    return b"[" + b"".join(b"\\x%02x" % value for value in sorted(chosen)) + b"]"


def compile_redis_glob(pattern: str) -> Callable[[bytes], bool]:
    """A predicate on raw key names that is true exactly when Redis ``MATCH pattern`` is.

    Args:
        pattern: The glob, as given to Redis (sent as UTF-8, as redis-py sends a str).

    Raises:
        ConfigurationError: The pattern is empty, or Redis's reading of it is not well defined.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ConfigurationError("a key pattern must be a non-empty str")
    raw = pattern.encode("utf-8", "surrogateescape")
    parts: list[bytes] = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == _STAR:
            parts.append(b".*")
            i += 1
        elif c == _QUESTION:
            parts.append(b".")
            i += 1
        elif c == _OPEN:
            chosen, i = _class_bytes(raw, i)
            parts.append(_class_regex(chosen))
        else:
            if c == _BACKSLASH and i + 1 < len(raw):
                i += 1  # an escape makes the next byte literal; a final '\' is itself literal
            parts.append(re.escape(raw[i : i + 1]))
            i += 1
    compiled = re.compile(b"".join(parts), re.DOTALL)

    def matches(key: bytes) -> bool:
        return compiled.fullmatch(key) is not None

    return matches
