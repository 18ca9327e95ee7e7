"""The HMAC chain key: where its root is kept, one chain across writers, sealing and checking."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto._core import DataKey
from greenlang_crypto.audit import AUDIT_CONTEXT, AuditEntry, AuditLog, ChainKey
from greenlang_crypto.audit.chain import _unwrap_root
from greenlang_crypto.audit.records import AuditRecord, Checkpoint
from greenlang_crypto.exceptions import AuditSinkUnavailableError, DecryptionError
from greenlang_crypto.service import EncryptionService

from .conftest import audit_stack


def test_chain_root_key_is_wrapped_by_the_provider(
    stack: tuple[EncryptionService, AuditLog],
) -> None:
    svc, audit = stack
    meta = json.loads(audit.sink.get_meta("chain_root_v1") or "{}")
    assert set(meta) == {"provider", "key_id", "wrapped"}
    assert meta["key_id"] == "local:master-v1"
    import base64

    wrapped = base64.b64decode(meta["wrapped"])
    with pytest.raises(DecryptionError):
        svc.provider.decrypt_data_key(meta["key_id"], wrapped, _other_ctx(), _limits())
    assert svc.provider.decrypt_data_key(meta["key_id"], wrapped, AUDIT_CONTEXT, _limits())


def _other_ctx() -> Any:
    from greenlang_crypto.context import EncryptionContext

    return EncryptionContext(tenant_id="_system", data_class="other")


def _limits() -> Any:
    from greenlang_crypto.providers.base import KeyLimits

    return KeyLimits()


def test_chain_continues_across_instances_and_concurrent_writers(data_dir: Path) -> None:
    _svc1, a1 = audit_stack(data_dir)
    _svc2, a2 = audit_stack(data_dir)

    def work(audit: AuditLog, name: str) -> None:
        for i in range(25):
            audit.record("admin_action", actor=name, details={"i": i})

    threads = [threading.Thread(target=work, args=(a, n)) for a, n in ((a1, "one"), (a2, "two"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a1.close()
    a2.close()
    _svc3, a3 = audit_stack(data_dir)
    result = a3.verify()
    assert result.ok, result.problems
    assert result.records == 50
    a3.close()


def _entries(*actors: str) -> list[AuditEntry]:
    return [AuditEntry(action="admin_action", actor=a, time="2026-01-01T00:00:00.000000Z")
            for a in actors]  # fmt: skip


def test_seal_numbers_after_the_last_record_and_links_each_mac_to_the_previous() -> None:
    key = ChainKey.from_root(DataKey.generate())
    first = key.seal(_entries("a", "b"), 0, None)
    assert [r.seq for r in first] == [1, 2]
    more = key.seal(_entries("c"), 2, first[-1].hmac)
    assert more[0].seq == 3
    assert key.check(first[0], None) and key.check(first[1], first[0].hmac)
    assert key.check(more[0], first[1].hmac)
    # A record checked after the wrong predecessor, or with its content changed, fails.
    assert not key.check(more[0], first[0].hmac)
    edited = AuditRecord(2, AuditEntry(action="admin_action", actor="mallory",
                                       time=first[1].entry.time), first[1].hmac)  # fmt: skip
    assert not key.check(edited, first[0].hmac)
    assert not key.check(AuditRecord(1, first[0].entry, "not hex"), None)


def test_the_same_root_gives_the_same_chain_and_another_root_another() -> None:
    root = DataKey.generate()
    entries = _entries("a", "b")
    ours = ChainKey.from_root(root).seal(entries, 0, None)
    assert ours == ChainKey.from_root(root).seal(entries, 0, None)
    theirs = ChainKey.from_root(DataKey.generate()).seal(entries, 0, None)
    assert [r.hmac for r in theirs] != [r.hmac for r in ours]
    assert not ChainKey.from_root(root).check(theirs[0], None)


def test_checkpoints_are_signed_with_the_anchor_key_not_the_chain_key() -> None:
    root = DataKey.generate()
    key = ChainKey.from_root(root)
    record = key.seal(_entries("a"), 0, None)[0]
    cp = key.sign_checkpoint(record.seq, record.hmac, "2026-01-01T00:00:00Z")
    assert (cp.seq, cp.hmac) == (1, record.hmac)
    assert key.check_checkpoint(cp)
    assert cp.mac != record.hmac  # a checkpoint MAC is never a record MAC
    assert not key.check_checkpoint(Checkpoint(2, cp.hmac, cp.time, cp.mac))
    assert not key.check_checkpoint(Checkpoint(cp.seq, cp.hmac, cp.time, "zz"))
    assert not ChainKey.from_root(DataKey.generate()).check_checkpoint(cp)


def test_without_an_anchor_key_checkpoints_can_be_neither_signed_nor_accepted() -> None:
    full = ChainKey.from_root(DataKey.generate())
    bare = ChainKey(DataKey.generate().derive_index_key(b"audit-chain/v1"))
    cp = full.sign_checkpoint(1, "00" * 32, "2026-01-01T00:00:00Z")
    with pytest.raises(AuditSinkUnavailableError):
        bare.sign_checkpoint(1, "00" * 32, "2026-01-01T00:00:00Z")
    assert not bare.check_checkpoint(cp)


@pytest.mark.parametrize(
    "stored",
    ["not json", "{}", json.dumps({"provider": "local", "key_id": "k", "wrapped": "%%%"})],
)
def test_a_malformed_stored_root_is_refused_before_unwrapping(stored: str) -> None:
    calls: list[object] = []

    def unwrap(*args: object) -> DataKey:
        calls.append(args)
        return DataKey.generate()

    with pytest.raises(AuditSinkUnavailableError):
        _unwrap_root(unwrap, stored)
    assert not calls


def test_a_stored_root_is_unwrapped_under_the_audit_context() -> None:
    seen: list[tuple[object, ...]] = []
    root = DataKey.generate()

    def unwrap(*args: object) -> DataKey:
        seen.append(args)
        return root

    stored = json.dumps({"provider": "local", "key_id": "local:master-v1", "wrapped": "AAEC"})
    assert _unwrap_root(unwrap, stored) is root
    assert seen == [("local", "local:master-v1", b"\x00\x01\x02", AUDIT_CONTEXT)]
