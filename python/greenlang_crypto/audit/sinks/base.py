"""The sink protocol and the query filter every sink understands."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from greenlang_crypto.audit.chain import ChainKey
from greenlang_crypto.audit.records import AuditEntry, AuditRecord
from greenlang_crypto.exceptions import AuditSinkUnavailableError


class AuditRecordRejectedError(AuditSinkUnavailableError):
    """The sink is up but refused these records (a data error, not an outage).

    The log then stores the records one by one and sends each refused one to its dead-letter
    file, instead of retrying the batch forever.
    """


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters and keyset pagination for :meth:`AuditSink.query`.

    Attributes:
        action: Only this action.
        actor: Only this actor.
        outcome: Only this outcome.
        key_version: Only this key version.
        since: Only records at or after this ISO 8601 time.
        until: Only records before this ISO 8601 time.
        after_seq: Only records with a larger sequence number (the pagination cursor).
        limit: At most this many records.
    """

    action: str | None = None
    actor: str | None = None
    outcome: str | None = None
    key_version: int | None = None
    since: str | None = None
    until: str | None = None
    after_seq: int = 0
    limit: int = 100

    def matches(self, r: AuditRecord) -> bool:
        """Whether ``r`` passes the filters (used by sinks without a query language)."""
        e = r.entry
        return (
            r.seq > self.after_seq
            and (self.action is None or e.action == self.action)
            and (self.actor is None or e.actor == self.actor)
            and (self.outcome is None or e.outcome == self.outcome)
            and (self.key_version is None or e.key_version == self.key_version)
            and (self.since is None or e.time >= self.since)
            and (self.until is None or e.time < self.until)
        )


class AuditSink(Protocol):
    """Where audit records are stored. Every method raises AuditSinkUnavailableError on failure."""

    description: str

    def append(self, entries: Sequence[AuditEntry], chain: ChainKey) -> list[AuditRecord]:
        """Seals ``entries`` after the current tail (atomically, under a lock) and stores them."""
        ...

    def records(self) -> Iterator[AuditRecord]:
        """Every record, in storage order (what :meth:`AuditLog.verify` walks)."""
        ...

    def query(self, q: AuditQuery) -> list[AuditRecord]:
        """Records matching ``q``, ascending by sequence number."""
        ...

    def tail(self, n: int) -> list[AuditRecord]:
        """The last ``n`` records, ascending."""
        ...

    def head(self) -> tuple[int, str] | None:
        """The ``(seq, hmac)`` the sink last wrote, kept apart from the records, if it has one."""
        ...

    def get_meta(self, name: str) -> str | None:
        """A metadata value (for example the wrapped audit root key)."""
        ...

    def put_meta_if_absent(self, name: str, value: str) -> str:
        """Stores ``value`` unless ``name`` exists; returns the stored value."""
        ...

    def ping(self) -> None:
        """Writes a probe value outside the chain (a read-only or full store fails here)."""
        ...

    def close(self) -> None:
        """Releases connections and files."""
        ...
