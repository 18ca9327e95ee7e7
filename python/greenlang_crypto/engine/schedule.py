"""The rotation policy's due dates, computed from the keyring alone.

:func:`rotation_schedule` turns the policy of a configuration (``rotation_period_seconds``,
``reencrypt_within_seconds``, ``retire_after_seconds``, ``index_rotation_period_seconds``,
``branch_rotation_period_seconds``) and the key store's own timestamps (when each key version,
index key version and branch key was created, when a version stopped being primary) into
what is due when. Nothing here reads a table of the application: whether rows still sit
under an old version is the autopilot's count. The same figures feed ``keys status``, the
autopilot's decisions and ``verify``, so the three never disagree on a date.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from greenlang_crypto.keys.index_key_store import IndexKeyRecord
from greenlang_crypto.keys.versions import KeyVersion

__all__ = ["RotationSchedule", "rotation_schedule"]


@dataclass(frozen=True, slots=True)
class RotationSchedule:
    """What the rotation policy makes due, and when (UNIX seconds; ``None``: nothing).

    Attributes:
        policy: The policy's durations in seconds by setting name (``None``: off).
        now: The time the schedule was computed for.
        primary_version: The primary key version.
        primary_created_at: When the primary became primary (its creation).
        next_rotation_at: When the primary is due for rotation (``None``: no period).
        reencrypt_due_at: When data under older readable versions must have moved to the
            primary (``None``: no deadline, or no older version is readable).
        retirements: ``(version, due_at)`` of every older, not yet retired version: when its
            grace period ends (``None`` without ``retire_after_seconds``).
        index_primary_version: The primary blind-index key version (``None``: none yet).
        next_index_rotation_at: When the primary index key is due for rotation.
        index_retirements: ``(version, due_at)`` of the older index keys still matched by
            lookups: the grace period after the index key that replaced it was made.
        oldest_branch_key_at: Creation time of the oldest active branch key under the primary
            key version (``None``: none).
        next_branch_rotation_at: When the oldest active branch key is due for rotation.
        overdue: The rotations whose date has passed, one sentence each (whether rows still
            wait for re-encryption is the autopilot's count, not the keyring's).
    """

    policy: dict[str, float | None]
    now: float
    primary_version: int
    primary_created_at: float
    next_rotation_at: float | None = None
    reencrypt_due_at: float | None = None
    retirements: tuple[tuple[int, float | None], ...] = ()
    index_primary_version: int | None = None
    next_index_rotation_at: float | None = None
    index_retirements: tuple[tuple[int, float | None], ...] = ()
    oldest_branch_key_at: float | None = None
    next_branch_rotation_at: float | None = None
    overdue: tuple[str, ...] = field(default=())

    @property
    def enabled(self) -> bool:
        """Whether any part of the policy is set."""
        return any(v is not None for v in self.policy.values())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (versions, durations and dates only)."""
        return {
            "policy": dict(self.policy),
            "now": self.now,
            "primary_version": self.primary_version,
            "primary_created_at": self.primary_created_at,
            "next_rotation_at": self.next_rotation_at,
            "reencrypt_due_at": self.reencrypt_due_at,
            "retirements": [{"version": v, "due_at": at} for v, at in self.retirements],
            "index_primary_version": self.index_primary_version,
            "next_index_rotation_at": self.next_index_rotation_at,
            "index_retirements": [{"version": v, "due_at": at} for v, at in self.index_retirements],
            "oldest_branch_key_at": self.oldest_branch_key_at,
            "next_branch_rotation_at": self.next_branch_rotation_at,
            "overdue": list(self.overdue),
        }


def _after(start: float | None, period: float | None) -> float | None:
    return None if start is None or period is None else start + period


def rotation_schedule(
    policy: dict[str, float | None],
    versions: Iterable[KeyVersion],
    index_keys: Iterable[IndexKeyRecord],
    oldest_branch_key_at: float | None,
    now: float,
) -> RotationSchedule:
    """The due dates of ``policy`` over the given key records, at ``now``.

    Args:
        policy: The durations by setting name (``rotation_period_seconds`` ...; ``None``: off).
        versions: The key versions of the keyring.
        index_keys: The blind-index key versions.
        oldest_branch_key_at: Creation time of the oldest active branch key under the
            primary version (``None``: none).
        now: The current time (UNIX seconds).

    Returns:
        The schedule; ``overdue`` names each rotation whose date has passed.
    """
    by_version = {v.version: v for v in versions}
    primary = next(v for v in by_version.values() if v.state == "primary")
    older = sorted(
        v for v, kv in by_version.items() if v < primary.version and kv.state != "retired"
    )
    retire_after = policy.get("retire_after_seconds")
    retirements = tuple(
        (v, _after(by_version[v].rotated_at or primary.created_at, retire_after)) for v in older
    )
    reencrypt_due = _after(primary.created_at, policy.get("reencrypt_within_seconds"))
    if not older:
        reencrypt_due = None

    indexes = sorted(index_keys, key=lambda r: r.version)
    index_primary = next((r for r in indexes if r.state == "primary"), None)
    made = {r.version: r.created_at for r in indexes}
    index_retirements = tuple(
        # An index key stopped being primary when the next version was made.
        (r.version, _after(made.get(r.version + 1), retire_after))
        for r in indexes
        if r.state == "active"
    )
    oldest_branch = oldest_branch_key_at

    schedule = RotationSchedule(
        policy=dict(policy),
        now=now,
        primary_version=primary.version,
        primary_created_at=primary.created_at,
        next_rotation_at=_after(primary.created_at, policy.get("rotation_period_seconds")),
        reencrypt_due_at=reencrypt_due,
        retirements=retirements,
        index_primary_version=None if index_primary is None else index_primary.version,
        next_index_rotation_at=(
            None
            if index_primary is None
            else _after(index_primary.created_at, policy.get("index_rotation_period_seconds"))
        ),
        index_retirements=index_retirements,
        oldest_branch_key_at=oldest_branch,
        next_branch_rotation_at=_after(oldest_branch, policy.get("branch_rotation_period_seconds")),
    )
    overdue = [
        f"{what} was due at {at:.0f}"
        for what, at in (
            (f"rotation of key version {primary.version}", schedule.next_rotation_at),
            ("rotation of the blind-index key", schedule.next_index_rotation_at),
            ("rotation of the oldest branch key", schedule.next_branch_rotation_at),
        )
        if at is not None and at <= now
    ]
    return replace(schedule, overdue=tuple(overdue))
