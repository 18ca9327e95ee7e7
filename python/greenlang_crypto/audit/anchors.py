"""Anchors: where signed checkpoints of the chain head are kept, outside the audit database.

The chain HMAC proves that the records present were written by a holder of the chain key, but
not that none are missing after the last one: whoever can write the audit database can cut its
tail, or empty it. A checkpoint ``(seq, hmac, time)`` MAC'd with a key derived from the chain
root, published at a fixed interval and at shutdown to a place that database access does not
reach, makes such a cut visible: :meth:`AuditLog.verify` fails when the log no longer reaches
an anchored checkpoint, or holds another record at its sequence number.

Anchors:

* :class:`FileAnchor`: an append-only JSON-lines file (0600). The embedded default is
  ``<audit file>.anchor`` beside the SQLite or JSON-lines log.
* :class:`S3Anchor`: one object per checkpoint in a bucket with S3 Object Lock (COMPLIANCE
  mode), so nobody can delete or overwrite it before the retention date.
* :class:`StreamAnchor`: one line per checkpoint to a stream (stdout) or a logger (syslog) for
  log shipping; it cannot be read back, so the verifier takes such a checkpoint as an
  argument (:meth:`AuditLog.verify`'s ``checkpoint``).

Every writer of one log must publish to the same anchors, or a checkpoint older than its
last records is all an anchor holds and a cut of those records goes unseen. So the anchors a
log gets by default (:func:`default_anchor`, used by every :class:`AuditLog` not given its
own) are the file beside a file-backed log *and* the URLs in ``$GLC_AUDIT_ANCHORS``
(comma-separated, see :func:`open_anchor`): the CLI, the API and the column jobs all publish
there. :func:`read_checkpoint_file` reads back what any of the anchors wrote, for
``audit verify --checkpoint-file``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO

from greenlang_crypto._files import open_private_append
from greenlang_crypto.audit.records import Checkpoint
from greenlang_crypto.exceptions import AuditSinkUnavailableError, ConfigurationError

__all__ = [
    "ANCHORS_ENV",
    "AnchorSet",
    "AuditAnchor",
    "FileAnchor",
    "S3Anchor",
    "StreamAnchor",
    "configured_anchors",
    "default_anchor",
    "env_anchor_urls",
    "open_anchor",
    "read_checkpoint_file",
]

_log = logging.getLogger("greenlang_crypto.audit")
_LINE_PREFIX = "glc-audit-checkpoint "
# The fields of a checkpoint's JSON (what tells it from another JSON log line).
_CHECKPOINT_FIELDS = frozenset({"seq", "hmac", "time", "mac"})
#: The environment variable naming the anchors every writer publishes to.
ANCHORS_ENV = "GLC_AUDIT_ANCHORS"

# The checkpoint this process last published to each place (a file, a bucket prefix, a
# stream). A writer may name one place twice (the environment and an option, or the default
# file named again); publishing the same checkpoint there a second time would only add a
# duplicate.
_published: dict[str, tuple[int, str, str]] = {}
_published_lock = threading.Lock()


def _already_published(place: str, cp: Checkpoint) -> bool:
    with _published_lock:
        return _published.get(place) == (cp.seq, cp.hmac, cp.time)


def _mark_published(place: str, cp: Checkpoint) -> None:
    with _published_lock:
        _published[place] = (cp.seq, cp.hmac, cp.time)


class AuditAnchor(Protocol):
    """A place for checkpoints outside the audit database."""

    description: str

    def publish(self, cp: Checkpoint) -> None:
        """Stores one checkpoint durably.

        Raises:
            AuditSinkUnavailableError: It was not stored.
        """
        ...

    def checkpoints(self) -> Iterator[Checkpoint] | None:
        """Every stored checkpoint, or None when this anchor cannot be read back.

        Raises:
            AuditSinkUnavailableError: The anchor is readable in principle but not now.
        """
        ...


class FileAnchor:
    """An append-only local file, one JSON checkpoint per line (0600, fsync'd).

    Args:
        path: The anchor file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.description = f"file://{self.path}"

    def publish(self, cp: Checkpoint) -> None:
        """Appends ``cp`` (one ``write`` with O_APPEND, then fsync)."""
        place = f"file:{os.path.abspath(self.path)}"
        if _already_published(place, cp):
            return
        try:
            fd = open_private_append(self.path)
            try:
                os.write(fd, (cp.to_json() + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditSinkUnavailableError(
                f"audit anchor {self.description} unavailable ({type(exc).__name__})"
            ) from None
        _mark_published(place, cp)

    def checkpoints(self) -> Iterator[Checkpoint] | None:
        """Every parseable line (a torn last line is skipped)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return iter(())
        except OSError as exc:
            raise AuditSinkUnavailableError(
                f"audit anchor {self.description} unreadable ({type(exc).__name__})"
            ) from None
        out: list[Checkpoint] = []
        for line in data.splitlines():
            if line.strip():
                try:
                    out.append(Checkpoint.from_json(line))
                except ValueError:
                    continue
        return iter(out)

    def __repr__(self) -> str:
        return f"FileAnchor({self.description})"


class S3Anchor:
    """One object per checkpoint in an S3 bucket with Object Lock enabled.

    Objects are named ``<prefix><seq, 20 digits>-<time>.json`` so a listing is in chain order,
    and are put with ``ObjectLockMode=COMPLIANCE`` and a retain-until date: until then nobody,
    the bucket owner included, can delete or overwrite them.

    Args:
        bucket: The bucket (created with Object Lock enabled).
        prefix: Key prefix for the checkpoints.
        client: A boto3 S3 client (default: ``boto3.client("s3")``).
        retention_days: Days each checkpoint is locked.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "glc-audit-checkpoints/",
        *,
        client: Any = None,
        retention_days: int = 2555,
    ) -> None:
        if not bucket:
            raise ConfigurationError("S3 anchor needs a bucket")
        if client is None:
            try:
                import boto3
            except ImportError:  # pragma: no cover - depends on the install
                raise ConfigurationError(
                    "the S3 audit anchor needs boto3: pip install 'greenlang-crypto[aws]'"
                ) from None
            client = boto3.client("s3")
        self.bucket = bucket
        self.prefix = prefix
        self.retention_days = retention_days
        self._client = client
        self.description = f"s3://{bucket}/{prefix}"

    def publish(self, cp: Checkpoint) -> None:
        """Puts ``cp`` as a new object under COMPLIANCE-mode retention."""
        endpoint = getattr(getattr(self._client, "meta", None), "endpoint_url", "")
        place = f"s3:{endpoint}:{self.bucket}/{self.prefix}"
        if _already_published(place, cp):
            return
        until = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=self.retention_days)
        body = cp.to_json().encode()
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=f"{self.prefix}{cp.seq:020d}-{cp.time}.json",
                Body=body,
                ContentType="application/json",
                ContentMD5=_content_md5(body),
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=until,
            )
        except Exception as exc:
            raise AuditSinkUnavailableError(
                f"audit anchor {self.description} unavailable ({type(exc).__name__})"
            ) from None
        _mark_published(place, cp)

    def _last_key(self) -> str | None:
        last: str | None = None
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            page = self._client.list_objects_v2(**kwargs)
            for obj in page.get("Contents", []):
                key = str(obj["Key"])
                if last is None or key > last:
                    last = key
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return last
            kwargs["ContinuationToken"] = token

    def checkpoints(self) -> Iterator[Checkpoint] | None:
        """The latest checkpoint (the highest sequence number in the listing)."""
        try:
            key = self._last_key()
            if key is None:
                return iter(())
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise AuditSinkUnavailableError(
                f"audit anchor {self.description} unreadable ({type(exc).__name__})"
            ) from None
        try:
            return iter([Checkpoint.from_json(body)])
        except ValueError:
            return iter(())

    def __repr__(self) -> str:
        return f"S3Anchor({self.description})"


def _content_md5(body: bytes) -> str:
    import base64

    # S3 requires Content-MD5 on puts with Object Lock retention (an integrity check, not a
    # security control).
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


class StreamAnchor:
    """Writes each checkpoint as one line to a stream or a logger, for log shipping.

    Args:
        stream: A text stream (default ``sys.stdout``); ignored when ``logger`` is given.
        logger: A logger to send the line to at INFO (for example one with a
            ``SysLogHandler``).
    """

    def __init__(self, stream: TextIO | None = None, *, logger: logging.Logger | None = None):
        self._stream = stream
        self._logger = logger
        self.description = f"logger:{logger.name}" if logger is not None else "stdout"

    def publish(self, cp: Checkpoint) -> None:
        """Writes ``glc-audit-checkpoint {json}``."""
        stream = self._stream if self._stream is not None else sys.stdout
        place = f"stream:{id(self._logger if self._logger is not None else stream)}"
        if _already_published(place, cp):
            return
        line = _LINE_PREFIX + cp.to_json()
        try:
            if self._logger is not None:
                self._logger.info("%s", line)
            else:
                stream.write(line + "\n")
                stream.flush()
        except (OSError, ValueError) as exc:
            raise AuditSinkUnavailableError(
                f"audit anchor {self.description} unavailable ({type(exc).__name__})"
            ) from None
        _mark_published(place, cp)

    def checkpoints(self) -> Iterator[Checkpoint] | None:
        """None: a stream cannot be read back (pass the shipped line to verify instead)."""
        return None

    @staticmethod
    def parse(line: str) -> Checkpoint:
        """Parses a line this anchor wrote (with or without its prefix or a log header).

        Raises:
            ValueError: No checkpoint in ``line``.
        """
        _, sep, rest = line.partition(_LINE_PREFIX)
        return Checkpoint.from_json(rest if sep else line)

    def __repr__(self) -> str:
        return f"StreamAnchor({self.description})"


class AnchorSet:
    """Several anchors as one: what :func:`default_anchor` returns when more than one applies.

    :class:`AuditLog` takes a single default anchor; this lets that default be the file
    beside the log and every anchor of ``$GLC_AUDIT_ANCHORS`` at once.

    Args:
        anchors: The anchors, published to in this order.
    """

    def __init__(self, anchors: Iterable[AuditAnchor]) -> None:
        self.anchors: list[AuditAnchor] = list(anchors)
        self.description = " + ".join(a.description for a in self.anchors)

    def publish(self, cp: Checkpoint) -> None:
        """Publishes ``cp`` to every anchor, even after one failed.

        Raises:
            AuditSinkUnavailableError: Some anchor did not store it (each is named).
        """
        failed: list[str] = []
        for anchor in self.anchors:
            try:
                anchor.publish(cp)
            except AuditSinkUnavailableError:
                failed.append(anchor.description)
        if failed:
            raise AuditSinkUnavailableError(f"audit anchor(s) {', '.join(failed)} unavailable")

    def checkpoints(self) -> Iterator[Checkpoint] | None:
        """What every readable anchor holds; None when none can be read back.

        Raises:
            AuditSinkUnavailableError: A readable anchor cannot be read now (verification
                fails rather than pass on the others alone).
        """
        out: list[Checkpoint] = []
        readable = False
        for anchor in self.anchors:
            found = anchor.checkpoints()
            if found is not None:
                readable = True
                out.extend(found)
        return iter(out) if readable else None

    def __repr__(self) -> str:
        return f"AnchorSet({self.description})"


def env_anchor_urls() -> list[str]:
    """The anchor URLs in ``$GLC_AUDIT_ANCHORS`` (comma-separated; empty entries ignored)."""
    return [u.strip() for u in os.environ.get(ANCHORS_ENV, "").split(",") if u.strip()]


def configured_anchors(sink: object, urls: Iterable[str] | None = None) -> list[AuditAnchor]:
    """The anchors a writer of ``sink`` publishes to.

    The file ``<log file>.anchor`` beside a SQLite or JSON-lines log (a PostgreSQL log has
    none), then each of ``urls``, else each URL of ``$GLC_AUDIT_ANCHORS``.

    Raises:
        ConfigurationError: A URL is not an anchor URL (see :func:`open_anchor`).
    """
    out: list[AuditAnchor] = []
    path = getattr(sink, "path", None)
    if isinstance(path, Path):
        out.append(FileAnchor(path.with_name(path.name + ".anchor")))
    named = list(urls) if urls is not None else env_anchor_urls()
    out += [open_anchor(u) for u in named]
    return out


def default_anchor(sink: object) -> AuditAnchor | None:
    """The anchors of ``sink`` when none are given: :func:`configured_anchors`, as one.

    ``<log file>.anchor`` beside a file-backed log, plus ``$GLC_AUDIT_ANCHORS``; None when
    neither applies (a PostgreSQL log and no anchor configured).

    Raises:
        ConfigurationError: ``$GLC_AUDIT_ANCHORS`` holds something that is not an anchor URL
            (a writer must not quietly publish nowhere).
    """
    anchors = configured_anchors(sink)
    if not anchors:
        return None
    if len(anchors) == 1:
        return anchors[0]
    return AnchorSet(anchors)


def read_checkpoint_file(path: str | os.PathLike[str]) -> list[Checkpoint]:
    """Every checkpoint in a file that an anchor wrote, or a log that shipped its lines.

    Reads what each anchor writes: :class:`FileAnchor`'s JSON lines, an object
    :class:`S3Anchor` put (one JSON document, with or without a final newline), and the
    ``glc-audit-checkpoint {...}`` lines of :class:`StreamAnchor`, also behind a syslog or
    collector header or as a string field of a JSON log line (a container runtime's log
    file, a journal export). A directory is read file by file (a synced copy of the S3
    prefix). Other lines are skipped; so is a last line cut short (a copy taken while an
    anchor was appending).

    Raises:
        OSError: The file cannot be read.
        ValueError: A line that is a checkpoint by its form does not parse (naming the
            line number, never its contents).
    """
    p = Path(path)
    if p.is_dir():
        out: list[Checkpoint] = []
        for child in sorted(c for c in p.rglob("*") if c.is_file()):
            out += read_checkpoint_file(child)
        return out
    data = p.read_bytes()
    lines = data.split(b"\n")
    found: list[Checkpoint] = []
    for number, raw in enumerate(lines, start=1):
        try:
            found += _checkpoints_in_line(raw.decode("utf-8", errors="replace").strip())
        except ValueError:
            if number == len(lines) and not data.endswith(b"\n"):
                continue  # a torn append, as FileAnchor.checkpoints skips it
            raise ValueError(f"{p}: line {number} is not a readable checkpoint") from None
    return found


def _checkpoints_in_line(line: str) -> list[Checkpoint]:
    """The checkpoints of one line (usually none or one).

    Raises:
        ValueError: The line is a checkpoint by its form (the anchor's prefix, or JSON with
            a checkpoint's fields) and does not parse.
    """
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            if doc.keys() >= _CHECKPOINT_FIELDS:
                return [Checkpoint.from_json(line)]
            # A JSON log line: the shipped line is one of its string fields.
            return [
                StreamAnchor.parse(value.strip())
                for value in doc.values()
                if isinstance(value, str) and _LINE_PREFIX in value
            ]
        if '"hmac"' in line:
            raise ValueError("not a checkpoint")  # a checkpoint's fields, cut or damaged
    if _LINE_PREFIX in line:
        return [StreamAnchor.parse(line)]
    return []


def open_anchor(url: str) -> AuditAnchor:
    """Opens an anchor from a URL.

    ``file:///path``, ``s3://bucket/prefix`` (boto3's default client and credentials),
    ``stdout`` or ``syslog`` (the local syslog socket, facility AUTHPRIV).

    Raises:
        ConfigurationError: Unknown scheme.
    """
    if url.startswith("file://"):
        return FileAnchor(url.removeprefix("file://"))
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return S3Anchor(bucket, prefix or "glc-audit-checkpoints/")
    if url == "stdout":
        return StreamAnchor()
    if url == "syslog":
        from logging.handlers import SysLogHandler

        logger = logging.getLogger("greenlang_crypto.audit.anchor")
        if not logger.handlers:
            address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
            logger.addHandler(SysLogHandler(address, facility=SysLogHandler.LOG_AUTHPRIV))
            logger.setLevel(logging.INFO)
            logger.propagate = False
        return StreamAnchor(logger=logger)
    raise ConfigurationError("audit anchor URL must be file://, s3://, stdout or syslog")
