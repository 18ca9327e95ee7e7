"""Connection strings made safe to show: a password never reaches a repr, a log or an error."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url"]

_MASK = "***"
#: Query or key=value parameters that carry a secret in libpq, redis-py and SQLAlchemy URLs.
_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "sslpassword", "token", "secret"})
_KEYWORD_SECRET = re.compile(
    r"(?i)\b(" + "|".join(sorted(_SECRET_PARAMS)) + r")\s*=\s*('(?:[^'\\]|\\.)*'|\S+)"
)


def redact_url(url: str) -> str:
    """``url`` with its password and secret parameters replaced by ``***``.

    Handles URLs (``postgresql://user:pw@host/db?password=…``, ``redis://:pw@host``) and libpq
    keyword strings (``host=h password=pw``). A string that cannot be parsed is masked whole
    rather than shown.
    """
    if "://" not in url:
        return _KEYWORD_SECRET.sub(lambda m: f"{m.group(1)}={_MASK}", url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{_MASK}@{host}" if ":" in userinfo else f"{user}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, _MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*/"
            )
        if netloc == parts.netloc and query == parts.query:
            return url  # nothing secret: shown exactly as given
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return f"{url.split('://', 1)[0]}://{_MASK}"
