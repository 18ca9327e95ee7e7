"""Chain verification: names every edited, deleted, inserted or reordered record."""

from __future__ import annotations

import datetime as _dt
import hmac
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from greenlang_crypto.audit.chain import ChainKey
from greenlang_crypto.audit.records import AuditRecord, Checkpoint


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    """One integrity problem found by :meth:`AuditLog.verify`.

    Attributes:
        seq: The sequence number of the record concerned (for a deletion: the missing one).
        kind: ``edited``, ``deleted``, ``inserted``, ``reordered``, ``truncated``,
            ``rewritten`` (differs from an anchored checkpoint), ``missing`` (no log),
            ``anchor`` (a checkpoint with a bad MAC), ``unanchored`` (records no checkpoint
            covers, see :func:`unanchored_records`) or ``unverifiable``.
        detail: A human-readable explanation.
    """

    seq: int
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`.

    Attributes:
        records: Records checked.
        problems: Everything found, in log order (empty when the chain is intact).
    """

    records: int
    problems: list[VerifyProblem]

    @property
    def ok(self) -> bool:
        """Whether the chain is intact."""
        return not self.problems


def _verify(
    records: Iterator[AuditRecord],
    chain: ChainKey,
    head: tuple[int, str] | None,
    anchored: Mapping[int, str] | None = None,
) -> VerifyResult:
    anchored = anchored or {}
    seen_anchor: dict[int, str] = {}
    problems: list[VerifyProblem] = []
    prev_seq, prev_hmac = 0, None
    before_prev: str | None = None
    count = 0
    for r in records:
        count += 1
        if r.seq in anchored and r.seq not in seen_anchor:
            seen_anchor[r.seq] = r.hmac
        if r.seq == prev_seq and r.seq > 0 and chain.check(r, before_prev):
            # Two records claim this seq and this one chains correctly: either an exact
            # replayed copy, or the one before it was a forged insertion.
            last = problems[-1] if problems else None
            if last is not None and last.seq == r.seq and last.kind == "edited":
                problems[-1] = VerifyProblem(
                    r.seq, "inserted", f"a forged record seq {r.seq} precedes the genuine one"
                )
                prev_hmac = r.hmac
            else:
                problems.append(
                    VerifyProblem(r.seq, "inserted", f"record seq {r.seq} appears twice")
                )
            continue
        if r.seq <= prev_seq:
            # A sequence number that does not grow: an insertion or a reordering.
            kind = "inserted" if r.seq == prev_seq or r.seq < 1 else "reordered"
            problems.append(
                VerifyProblem(r.seq, kind, f"record seq {r.seq} appears after seq {prev_seq}")
            )
            continue
        if r.seq > prev_seq + 1:
            chained = chain.check(r, prev_hmac)
            missing = ", ".join(str(s) for s in range(prev_seq + 1, min(r.seq, prev_seq + 6)))
            more = "…" if r.seq - prev_seq - 1 > 5 else ""
            problems.append(
                VerifyProblem(
                    prev_seq + 1,
                    "deleted" if not chained else "reordered",
                    f"record(s) {missing}{more} missing before seq {r.seq}",
                )
            )
        elif not chain.check(r, prev_hmac):
            problems.append(
                VerifyProblem(r.seq, "edited", f"record seq {r.seq} does not match its HMAC")
            )
        # Resynchronize on the stored HMAC so one bad record is reported once.
        before_prev = prev_hmac
        prev_seq, prev_hmac = r.seq, r.hmac
    # A record reported missing that shows up later was moved, not deleted.
    late = {p.seq for p in problems if p.kind == "reordered" and "appears after" in p.detail}
    merged: list[VerifyProblem] = []
    for p in problems:
        if p.kind == "deleted" and p.seq in late:
            merged.append(VerifyProblem(p.seq, "reordered", f"record seq {p.seq} was moved"))
        elif not (p.kind == "reordered" and p.seq in late and "appears after" in p.detail):
            merged.append(p)
    problems = merged
    if head is not None and head[0] > prev_seq:
        problems.append(
            VerifyProblem(
                prev_seq + 1, "truncated", f"records after seq {prev_seq} missing (head {head[0]})"
            )
        )
    for seq, mac in sorted(anchored.items()):
        if seq in seen_anchor and not hmac.compare_digest(seen_anchor[seq], mac):
            problems.append(
                VerifyProblem(
                    seq, "rewritten", f"record seq {seq} differs from the anchored checkpoint"
                )
            )
    top = max(anchored, default=0)
    if top > prev_seq:
        problems.append(
            VerifyProblem(
                prev_seq + 1,
                "truncated",
                f"the log ends at seq {prev_seq} but a checkpoint anchors seq {top}",
            )
        )
    return VerifyResult(count, problems)


def unanchored_records(
    last: AuditRecord | None,
    checkpoints: Iterable[Checkpoint],
    *,
    grace_seconds: float,
    now: float,
) -> VerifyProblem | None:
    """The records after the newest checkpoint, once the last of them is older than the grace.

    With anchors configured, every writer publishes a checkpoint when it closes and at its
    interval, so a record that no checkpoint covers for longer than that was written by a
    writer that does not publish; the anchors then vouch for nothing after it, and a cut of
    those records would go unseen. The grace leaves room for a live writer's next
    checkpoint.

    Args:
        last: The log's last record (None: an empty log, nothing to cover).
        checkpoints: The checkpoints the anchors hold (MACs already verified).
        grace_seconds: How long a record may wait for its checkpoint.
        now: The current time (seconds since the epoch).
    """
    if last is None:
        return None
    top = max((cp.seq for cp in checkpoints), default=0)
    if last.seq <= top:
        return None
    try:
        written = _dt.datetime.strptime(last.entry.time, "%Y-%m-%dT%H:%M:%S.%fZ")
        age = now - written.replace(tzinfo=_dt.UTC).timestamp()
    except ValueError:
        age = float("inf")  # a time we cannot read cannot claim to be recent
    if age < grace_seconds:
        return None
    return VerifyProblem(
        top + 1,
        "unanchored",
        f"no checkpoint covers records {top + 1}..{last.seq} (the newest checkpoint is at seq "
        f"{top}); a writer of this log does not publish to the configured anchors",
    )
