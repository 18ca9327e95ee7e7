"""The rotation policy's due dates from key-store timestamps (no database, no clock)."""

from __future__ import annotations

from greenlang_crypto.engine.schedule import rotation_schedule
from greenlang_crypto.keys.index_key_store import IndexKeyRecord
from greenlang_crypto.keys.versions import KeyVersion

DAY = 86400.0
OFF: dict[str, float | None] = {
    "rotation_period_seconds": None,
    "reencrypt_within_seconds": None,
    "retire_after_seconds": None,
    "index_rotation_period_seconds": None,
    "branch_rotation_period_seconds": None,
}


def _version(v: int, state: str, created: float, rotated: float | None = None) -> KeyVersion:
    return KeyVersion(v, state, "local", f"local:k{v}", created, rotated)


def _index(v: int, state: str, created: float) -> IndexKeyRecord:
    return IndexKeyRecord(v, state, "local", "local:k1", b"w", created)


def test_an_empty_policy_has_no_dates_and_nothing_overdue() -> None:
    s = rotation_schedule(
        OFF, [_version(1, "primary", 0.0)], [_index(1, "primary", 0.0)], 0.0, 10 * DAY
    )
    assert not s.enabled
    assert (s.next_rotation_at, s.reencrypt_due_at, s.next_index_rotation_at) == (None, None, None)
    assert s.next_branch_rotation_at is None
    assert s.retirements == () and s.overdue == ()


def test_rotation_is_due_a_period_after_the_primary_was_made() -> None:
    policy = {**OFF, "rotation_period_seconds": 365 * DAY}
    versions = [_version(1, "decrypt_only", 0.0, 100.0), _version(2, "primary", 100.0)]
    early = rotation_schedule(policy, versions, [], None, 100.0 + 364 * DAY)
    assert early.enabled and early.primary_version == 2
    assert early.next_rotation_at == 100.0 + 365 * DAY
    assert early.overdue == ()
    late = rotation_schedule(policy, versions, [], None, 100.0 + 365 * DAY)
    assert late.overdue == (f"rotation of key version 2 was due at {100.0 + 365 * DAY:.0f}",)


def test_older_readable_versions_get_a_reencryption_deadline_and_a_retirement_date() -> None:
    policy = {**OFF, "reencrypt_within_seconds": 30 * DAY, "retire_after_seconds": 40 * DAY}
    versions = [
        _version(1, "retired", 0.0, 10.0),
        _version(2, "decrypt_only", 10.0, 20.0),
        _version(3, "active", 20.0, 50.0),
        _version(4, "primary", 50.0),
    ]
    s = rotation_schedule(policy, versions, [], None, 60.0)
    assert s.reencrypt_due_at == 50.0 + 30 * DAY
    # The retired one is done; each other older version waits from when it stopped being
    # primary.
    assert s.retirements == ((2, 20.0 + 40 * DAY), (3, 50.0 + 40 * DAY))
    # Whether rows still wait is the autopilot's count: a deadline is no overdue rotation.
    assert s.overdue == ()
    alone = rotation_schedule(policy, [_version(1, "primary", 0.0)], [], None, 60.0)
    assert alone.reencrypt_due_at is None and alone.retirements == ()


def test_index_keys_rotate_on_their_own_period_and_retire_after_their_successor() -> None:
    policy = {**OFF, "index_rotation_period_seconds": 90 * DAY, "retire_after_seconds": DAY}
    index = [_index(1, "retired", 0.0), _index(2, "active", 5.0), _index(3, "primary", 9.0)]
    s = rotation_schedule(policy, [_version(1, "primary", 0.0)], index, None, 10.0)
    assert s.index_primary_version == 3
    assert s.next_index_rotation_at == 9.0 + 90 * DAY
    assert s.index_retirements == ((2, 9.0 + DAY),)
    overdue = rotation_schedule(policy, [_version(1, "primary", 0.0)], index, None, 91 * DAY)
    assert overdue.overdue == (f"rotation of the blind-index key was due at {9.0 + 90 * DAY:.0f}",)
    none_yet = rotation_schedule(policy, [_version(1, "primary", 0.0)], [], None, 10.0)
    assert none_yet.index_primary_version is None and none_yet.next_index_rotation_at is None


def test_branch_keys_are_due_a_period_after_the_oldest_active_one() -> None:
    policy = {**OFF, "branch_rotation_period_seconds": 7 * DAY}
    s = rotation_schedule(policy, [_version(1, "primary", 0.0)], [], 3.0, 8 * DAY)
    assert s.oldest_branch_key_at == 3.0
    assert s.next_branch_rotation_at == 3.0 + 7 * DAY
    assert s.overdue == (f"rotation of the oldest branch key was due at {3.0 + 7 * DAY:.0f}",)
    assert s.as_dict()["next_branch_rotation_at"] == 3.0 + 7 * DAY
