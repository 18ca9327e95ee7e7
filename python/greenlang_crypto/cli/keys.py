"""``greenlang-crypto keys ...``: list, rotate, rewrap, retire, status, branch keys, erasure.

Every change is audited and fails closed: its intent record is written first, and with the
audit sink down nothing changes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from greenlang_crypto.cli._common import one_shot
from greenlang_crypto.cli._io import key_progress
from greenlang_crypto.composition import Composition
from greenlang_crypto.exceptions import GreenlangCryptoError

if TYPE_CHECKING:
    from greenlang_crypto.engine.schedule import RotationSchedule

__all__ = ["KEYS_COMMANDS", "cmd_keys"]


def _audited(stack: Composition, action: str, run: Callable[[], Any]) -> Any:
    """Runs ``run`` behind an audit intent record of ``action`` (see Composition.audited)."""
    with stack.audited(action):
        return run()


def _list(args: argparse.Namespace, stack: Composition) -> int:
    rows = [
        {
            "version": v.version,
            "state": v.state,
            "provider": v.provider,
            "wrapping_key_id": v.wrapping_key_id,
        }
        for v in stack.service.versions()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"v{r['version']:<4} {r['state']:<13} {r['provider']:<8} {r['wrapping_key_id']}")
    return 0


def _rotate(args: argparse.Namespace, stack: Composition) -> int:
    svc = stack.service
    result = _audited(
        stack, "key_rotate", lambda: svc.rotate(new_wrapping_key_id=args.wrapping_key_id)
    )
    print(f"rotated: v{result.old_version} -> v{result.new_version} ({result.wrapping_key_id})")
    return 0


def _rewrap(args: argparse.Namespace, stack: Composition) -> int:
    svc = stack.service
    target = args.wrapping_key_id
    if target is None:
        if not svc.can_create_wrapping_key():
            raise GreenlangCryptoError("--wrapping-key-id is required for this provider")
        target = svc.create_wrapping_key()
    bar = key_progress(svc.stored_dek_count(), "rewrap")
    done = _audited(
        stack,
        "key_rewrap",
        lambda: svc.rewrap(target, progress=bar.update if bar is not None else None),
    )
    if bar is not None:
        bar.close()
    print(f"rewrapped {done} stored DEK(s) under {target}")
    return 0


def _retire(args: argparse.Namespace, stack: Composition) -> int:
    svc = stack.service
    _audited(
        stack,
        "key_retire",
        lambda: svc.retire_versions_below(
            args.below, delete_stored_deks=args.delete_stored_deks, force=args.force
        ),
    )
    print(f"minimum decryption version is now {svc.min_decryption_version}")
    return 0


def _branch(args: argparse.Namespace, stack: Composition) -> int:
    """Rotates or deletes the branch keys of one scope (``--scope`` or ``--tenant``)."""
    svc = stack.service
    # argparse requires exactly one of the two.
    scope = args.scope or "tenant:" + args.tenant
    if args.keys_command == "branch-rotate":
        branch_id = _audited(stack, "branch_key_rotate", lambda: svc.rotate_branch_key(scope))
        print(f"branch key of {scope} rotated: new id {branch_id}")
        return 0
    if not args.yes:
        raise GreenlangCryptoError(
            f"deleting the branch keys of {scope} makes its data unreadable forever; add --yes"
        )
    deleted = _audited(stack, "branch_key_delete", lambda: svc.delete_branch_keys(scope))
    print(f"deleted {deleted} branch key(s) of {scope}")
    return 0


def _erase(args: argparse.Namespace, stack: Composition) -> int:
    """Erases one tenant (``keys erase --tenant ID --yes``): see ``erase_tenant``."""
    svc = stack.service
    tenant = args.tenant
    if not args.yes:
        raise GreenlangCryptoError(
            f"erasing tenant {tenant} makes its data unreadable forever; add --yes"
        )
    report = _audited(
        stack,
        "tenant_erase",
        lambda: svc.erase_tenant(
            tenant,
            schedule_kms_key_deletion=args.schedule_kms_key_deletion,
            pending_window_days=args.pending_window_days,
        ),
    )
    if args.json:
        print(
            json.dumps(
                {
                    "tenant_id": report.tenant_id,
                    "stored_deks_destroyed": report.stored_deks_destroyed,
                    "branch_keys_destroyed": report.branch_keys_destroyed,
                    "instances_acknowledged": report.instances_acknowledged,
                    "began": report.began,
                    "completed": report.completed,
                    "epoch": report.epoch,
                    "seconds": round(report.seconds, 3),
                    "kms_key_deletion_date": report.kms_key_deletion_date,
                },
                indent=2,
            )
        )
        return 0
    done = "erased" if report.completed else "erased (completed by another run)"
    print(
        f"tenant {tenant} {done}: {report.stored_deks_destroyed} stored DEK(s) and "
        f"{report.branch_keys_destroyed} branch key(s) destroyed; "
        f"{report.instances_acknowledged} other instance(s) acknowledged "
        f"({report.seconds:.1f}s)"
    )
    if report.kms_key_deletion_date:
        print(f"its KMS key is scheduled for deletion on {report.kms_key_deletion_date}")
    return 0


def _status(args: argparse.Namespace, stack: Composition) -> int:
    """Prints the keyring (epoch, primary, minimum) and which instance runs which epoch."""
    svc = stack.service
    svc.refresh_keyring()
    live = {i.instance_id for i in svc.live_instances()}
    doc: dict[str, Any] = {
        "epoch": svc.keyring_epoch,
        "primary_version": svc.primary_version,
        "min_decryption_version": svc.min_decryption_version,
        "instances": [
            {
                "instance_id": i.instance_id,
                "host": i.host,
                "pid": i.pid,
                "epoch": i.epoch,
                "primary_version": i.primary_version,
                "min_version": i.min_version,
                "last_seen_seconds_ago": round(max(0.0, time.time() - i.last_seen), 1),
                "live": i.instance_id in live,
                "current": i.epoch == svc.keyring_epoch,
            }
            for i in svc.instances()
            if i.instance_id != svc.instance_id
        ],
    }
    schedule = svc.rotation_schedule()
    if schedule.enabled:
        doc["rotation_policy"] = schedule.as_dict()
    doc["autopilot"] = svc.last_autopilot_step()
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"keyring epoch {doc['epoch']}: primary v{doc['primary_version']}, "
        f"minimum decryption version {doc['min_decryption_version']}"
    )
    if schedule.enabled:
        _print_schedule(schedule)
    last = doc["autopilot"]
    if last is not None:
        print(
            f"autopilot: last step {last['status']} at {_when(last['finished_at'])} "
            f"by {last['runner']}"
        )
        for reason in last["reasons"]:
            print(f"  {reason}")
    for row in doc["instances"]:
        assert isinstance(row, dict)
        state = ("live" if row["live"] else "stale") + ("" if row["current"] else ", behind")
        print(
            f"{row['host']}:{row['pid']:<8} epoch {row['epoch']:<6} primary "
            f"v{row['primary_version']:<4} seen {row['last_seen_seconds_ago']}s ago ({state})"
        )
    return 0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _print_schedule(schedule: RotationSchedule) -> None:
    """The policy and its next due dates, one line each (``OVERDUE`` when passed)."""
    print("rotation policy:")
    for name, seconds in schedule.policy.items():
        shown = "off" if seconds is None else _duration(seconds)
        print(f"  {name.removesuffix('_seconds')}: {shown}")
    due = [
        (f"rotate v{schedule.primary_version}", schedule.next_rotation_at),
        (f"re-encrypt to v{schedule.primary_version} by", schedule.reencrypt_due_at),
        *((f"retire v{v}", at) for v, at in schedule.retirements),
        (f"rotate index key v{schedule.index_primary_version}", schedule.next_index_rotation_at),
        *((f"retire index key v{v}", at) for v, at in schedule.index_retirements),
        ("rotate the oldest branch key", schedule.next_branch_rotation_at),
    ]
    for what, at in due:
        if at is not None:
            late = " (OVERDUE)" if at <= schedule.now else ""
            print(f"  next: {what} at {_when(at)}{late}")


#: ``keys <command>``: the function that runs it.
KEYS_COMMANDS: Mapping[str, Callable[[argparse.Namespace, Composition], int]] = {
    "list": _list,
    "rotate": _rotate,
    "rewrap": _rewrap,
    "retire": _retire,
    "status": _status,
    "branch-rotate": _branch,
    "branch-delete": _branch,
    "erase": _erase,
}


def cmd_keys(args: argparse.Namespace) -> int:
    """Lists, rotates, rewraps or retires key versions (changes are audited, fail closed)."""
    stack = one_shot(args)
    # The service first, as every keys command needs it: an uninitialized directory is
    # refused before anything else is looked at.
    stack.service  # noqa: B018
    return KEYS_COMMANDS[args.keys_command](args, stack)
