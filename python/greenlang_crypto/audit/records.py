"""Audit entries and sealed records, and their canonical encoding."""

from __future__ import annotations

import datetime as _dt
import json
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
