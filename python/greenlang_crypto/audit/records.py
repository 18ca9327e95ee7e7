"""Audit entries and sealed records, and their canonical encoding."""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Scalar = str | int | float | bool | None


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _scalar(value: object) -> Scalar:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


#: Longest text kept in one field; longer values are cut (a record is evidence, not storage).
MAX_FIELD_CHARS = 1024


def clean_text(value: str) -> str:
    r"""``value`` made storable by every sink: valid UTF-8, no NUL, bounded length.

    Lone surrogates (``"j\udcf6rg"``, what ``os.fsdecode`` makes of a non-UTF-8 user name) are
    written as ``\udcf6`` escapes, NUL (refused by PostgreSQL text) as ``\x00``, so the
    record still shows what was there and every sink can encode it.
    """
    if len(value) > MAX_FIELD_CHARS:
        value = value[:MAX_FIELD_CHARS] + "…"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    return value


def _clean_scalar(value: object) -> Scalar:
    v = _scalar(value)
    if isinstance(v, float) and math.isnan(v):  # NaN has no JSON form every sink accepts
        return None
    return clean_text(v) if isinstance(v, str) else v


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit event before it is sealed into the chain.

    Attributes:
        action: What happened (an event name or an admin action such as ``key_rotate``).
        actor: Who did it (token subject, ``service`` for the data path, ``cli:<user>``).
        outcome: ``success``, ``failure``, ``denied`` or ``intent``.
        time: When (ISO 8601, UTC).
        key_id: Wrapping key id (KMS ARN or local master key id), if any.
        key_version: Keyring version, if any.
        context_digest: Hex SHA-256 of the canonical encryption context, if any.
        data_class: The context's data class, if any.
        request_id: The API request id, if any.
        reason: The caller's stated reason (API decrypts, admin actions).
        details: Further non-secret scalars (counts, error type).
    """

    action: str
    actor: str = "service"
    outcome: str = "success"
    time: str = field(default_factory=_now_iso)
    key_id: str | None = None
    key_version: int | None = None
    context_digest: str | None = None
    data_class: str | None = None
    request_id: str | None = None
    reason: str | None = None
    details: Mapping[str, Scalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Validate and encode at creation, so a record a sink cannot store (a user name that
        # is not UTF-8, a NUL) never reaches the flusher and never blocks later records.
        for name in (
            "action",
            "actor",
            "outcome",
            "time",
            "key_id",
            "context_digest",
            "data_class",
            "request_id",
            "reason",
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                value = str(value)
            object.__setattr__(self, name, clean_text(value))
        kv = self.key_version
        if kv is not None and (not isinstance(kv, int) or isinstance(kv, bool)):
            object.__setattr__(self, "key_version", None)
        details = {clean_text(str(k)): _clean_scalar(v) for k, v in dict(self.details).items()}
        object.__setattr__(self, "details", details)
        # Fail here, not at flush, if anything is still not encodable.
        canonical_bytes(0, self).decode("ascii")


def entry_to_dict(e: AuditEntry) -> dict[str, Any]:
    """An entry as a JSON-ready dict (for the dead-letter and pending files)."""
    return {
        "time": e.time,
        "actor": e.actor,
        "action": e.action,
        "outcome": e.outcome,
        "key_id": e.key_id,
        "key_version": e.key_version,
        "context_digest": e.context_digest,
        "data_class": e.data_class,
        "request_id": e.request_id,
        "reason": e.reason,
        "details": dict(e.details),
    }


def entry_from_dict(d: Mapping[str, Any]) -> AuditEntry:
    """Parses :func:`entry_to_dict` output."""
    return AuditEntry(
        action=str(d["action"]),
        actor=str(d["actor"]),
        outcome=str(d["outcome"]),
        time=str(d["time"]),
        key_id=d.get("key_id"),
        key_version=d.get("key_version"),
        context_digest=d.get("context_digest"),
        data_class=d.get("data_class"),
        request_id=d.get("request_id"),
        reason=d.get("reason"),
        details=dict(d.get("details") or {}),
    )


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A sealed audit record: an entry with its sequence number and chain HMAC.

    Attributes:
        seq: Position in the chain (1, 2, ...).
        entry: The recorded event.
        hmac: Hex HMAC-SHA256 over the previous record's HMAC and this record's canonical bytes.
    """

    seq: int
    entry: AuditEntry
    hmac: str

    def canonical_bytes(self) -> bytes:
        """The bytes the chain HMAC covers (sorted-key compact JSON; excludes ``hmac``)."""
        return canonical_bytes(self.seq, self.entry)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (what the API and ``audit tail`` show)."""
        e = self.entry
        return {
            "seq": self.seq,
            "time": e.time,
            "actor": e.actor,
            "action": e.action,
            "outcome": e.outcome,
            "key_id": e.key_id,
            "key_version": e.key_version,
            "context_digest": e.context_digest,
            "data_class": e.data_class,
            "request_id": e.request_id,
            "reason": e.reason,
            "details": dict(e.details),
            "hmac": self.hmac,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditRecord:
        """Parses :meth:`to_dict` output (for example a JSON-lines row)."""
        entry = AuditEntry(
            action=str(d["action"]),
            actor=str(d["actor"]),
            outcome=str(d["outcome"]),
            time=str(d["time"]),
            key_id=d.get("key_id"),
            key_version=d.get("key_version"),
            context_digest=d.get("context_digest"),
            data_class=d.get("data_class"),
            request_id=d.get("request_id"),
            reason=d.get("reason"),
            details=dict(d.get("details") or {}),
        )
        return cls(int(d["seq"]), entry, str(d["hmac"]))


def canonical_bytes(seq: int, entry: AuditEntry) -> bytes:
    """Canonical encoding of a record: sorted keys, no whitespace, ASCII only."""
    doc = {
        "seq": seq,
        "time": entry.time,
        "actor": entry.actor,
        "action": entry.action,
        "outcome": entry.outcome,
        "key_id": entry.key_id,
        "key_version": entry.key_version,
        "context_digest": entry.context_digest,
        "data_class": entry.data_class,
        "request_id": entry.request_id,
        "reason": entry.reason,
        "details": dict(entry.details),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def checkpoint_bytes(seq: int, hmac: str, time: str) -> bytes:
    """Canonical bytes a checkpoint MAC covers (a prefix no record encoding starts with)."""
    doc = {"seq": seq, "hmac": hmac, "time": time}
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return b"glc-audit-checkpoint/v1\x00" + body.encode()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the chain head, stored outside the audit database.

    Attributes:
        seq: Sequence number of the head record.
        hmac: Chain HMAC of the head record (hex).
        time: When the checkpoint was taken (ISO 8601, UTC).
        mac: Hex HMAC-SHA256 over ``(seq, hmac, time)`` with the checkpoint key.
    """

    seq: int
    hmac: str
    time: str
    mac: str

    def to_json(self) -> str:
        """One compact JSON line."""
        doc = {"seq": self.seq, "hmac": self.hmac, "time": self.time, "mac": self.mac}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Checkpoint:
        """Parses :meth:`to_json` output.

        Raises:
            ValueError: Not a checkpoint.
        """
        try:
            doc = json.loads(text)
            seq = doc["seq"]
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise ValueError("bad seq")
            return cls(seq, str(doc["hmac"]), str(doc["time"]), str(doc["mac"]))
        except (KeyError, TypeError) as exc:
            raise ValueError("not a checkpoint") from exc
