"""Chain verification: every edit, deletion, insertion and reordering is named, in SQLite and
JSON-lines logs and through the CLI; a log rebuilt under the genuine key still fails against a
checkpoint anchored before; records no checkpoint covers are reported after their grace."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext, cli
from greenlang_crypto._core import DataKey
from greenlang_crypto.audit import (
    AuditEntry,
    AuditLog,
    ChainKey,
    JsonLinesAuditSink,
    SqliteAuditSink,
)
from greenlang_crypto.audit.records import AuditRecord, Checkpoint
from greenlang_crypto.audit.verifier import VerifyResult, _verify, unanchored_records
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

from .conftest import audit_stack

# -- tamper evidence -------------------------------------------------------------------------


def _sqlite_log(data_dir: Path, n: int = 6) -> AuditLog:
    _svc, audit = audit_stack(data_dir)
    for i in range(1, n + 1):
        audit.record("admin_action", actor=f"op{i}", details={"i": i})
    assert audit.verify().ok
    return audit


def _exec(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as db:
        for stmt in statements:
            db.execute(stmt)


@pytest.mark.parametrize(
    ("statements", "seq", "kind"),
    [
        (["UPDATE glc_audit SET actor = 'mallory' WHERE seq = 3"], 3, "edited"),
        (["UPDATE glc_audit SET details = '{\"i\":99}' WHERE seq = 4"], 4, "edited"),
        (["UPDATE glc_audit SET time = '2000-01-01T00:00:00.000000Z' WHERE seq = 2"], 2, "edited"),
        (["UPDATE glc_audit SET outcome = 'denied' WHERE seq = 6"], 6, "edited"),
        (["DELETE FROM glc_audit WHERE seq = 3"], 3, "deleted"),
        (["DELETE FROM glc_audit WHERE seq = 6"], 6, "truncated"),
        (
            [
                "INSERT INTO glc_audit SELECT 7, time, 'mallory', action, outcome, key_id, "
                "key_version, context_digest, data_class, request_id, reason, details, hmac "
                "FROM glc_audit WHERE seq = 6"
            ],
            7,
            "edited",
        ),
        (
            [
                "UPDATE glc_audit SET seq = seq + 100 WHERE seq >= 3",
                "UPDATE glc_audit SET seq = seq - 99 WHERE seq >= 103",
                "INSERT INTO glc_audit SELECT 3, time, 'mallory', action, outcome, key_id, "
                "key_version, context_digest, data_class, request_id, reason, details, hmac "
                "FROM glc_audit WHERE seq = 2",
            ],
            3,
            "edited",
        ),
        (
            [
                "UPDATE glc_audit SET seq = 100 WHERE seq = 2",
                "UPDATE glc_audit SET seq = 2 WHERE seq = 3",
                "UPDATE glc_audit SET seq = 3 WHERE seq = 100",
            ],
            2,
            "edited",
        ),
    ],
    ids=[
        "edit-actor",
        "edit-details",
        "edit-time",
        "edit-last",
        "delete-middle",
        "delete-last",
        "insert-at-end",
        "insert-in-middle",
        "reorder-swap",
    ],
)
def test_sqlite_tampering_is_detected_and_named(
    data_dir: Path, statements: list[str], seq: int, kind: str
) -> None:
    audit = _sqlite_log(data_dir)
    _exec(data_dir / "audit.db", *statements)
    result = audit.verify()
    assert not result.ok
    first = result.problems[0]
    assert (first.seq, first.kind) == (seq, kind), result.problems
    audit.close()


def _jsonl_log(data_dir: Path, n: int = 6) -> tuple[AuditLog, Path]:
    path = data_dir / "audit.jsonl"
    _svc, audit = audit_stack(data_dir, JsonLinesAuditSink(path))
    for i in range(1, n + 1):
        audit.record("admin_action", actor=f"op{i}", details={"i": i})
    assert audit.verify().ok
    return audit, path


def _edit_lines(path: Path, fn: Any) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def _set_actor(line: str, actor: str) -> str:
    doc = json.loads(line)
    doc["actor"] = actor
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("edit", "seq", "kind"),
    [
        (lambda ls: [*ls[:2], _set_actor(ls[2], "mallory"), *ls[3:]], 3, "edited"),
        (lambda ls: [*ls[:2], *ls[3:]], 3, "deleted"),
        (lambda ls: [*ls[:3], ls[2], *ls[3:]], 3, "inserted"),
        (lambda ls: [*ls[:3], _set_actor(ls[3], "x"), *ls[3:]], 4, "inserted"),
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2, "reordered"),
        (lambda ls: [*ls[:3], "{not json", *ls[3:]], -4, "inserted"),
        (lambda ls: ls[:-1], 6, "truncated"),
    ],
    ids=["edit", "delete", "insert-duplicate", "insert-forged", "reorder", "garbage", "truncate"],
)
def test_jsonl_tampering_is_detected_and_named(
    data_dir: Path, edit: Any, seq: int, kind: str
) -> None:
    audit, path = _jsonl_log(data_dir)
    _edit_lines(path, edit)
    result = audit.verify()
    assert not result.ok
    assert (result.problems[0].seq, result.problems[0].kind) == (seq, kind), result.problems


def test_forged_record_with_recomputed_plain_hash_is_rejected(data_dir: Path) -> None:
    import hashlib

    audit, path = _jsonl_log(data_dir, 3)

    def forge(lines: list[str]) -> list[str]:
        doc = json.loads(lines[-1])
        doc["seq"], doc["actor"] = 4, "mallory"
        doc["hmac"] = hashlib.sha256(json.dumps(doc).encode()).hexdigest()
        return [*lines, json.dumps(doc)]

    _edit_lines(path, forge)
    result = audit.verify()
    assert [(p.seq, p.kind) for p in result.problems] == [(4, "edited")]


def test_cli_audit_verify_names_the_bad_record(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = _sqlite_log(data_dir)
    audit.close()
    assert cli.main(["--data-dir", str(data_dir), "audit", "verify"]) == 0
    assert "chain intact" in capsys.readouterr().out
    _exec(data_dir / "audit.db", "UPDATE glc_audit SET reason = 'edited' WHERE seq = 5")
    assert cli.main(["--data-dir", str(data_dir), "audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "BAD record seq 5: edited" in out
    assert cli.main(["--data-dir", str(data_dir), "audit", "tail", "-n", "2"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in rows] == [5, 6]


# -- a log rebuilt under the genuine key ----------------------------------------------------

CTX = EncryptionContext(tenant_id="t1", data_class="pii")


def _service(data: Path) -> EncryptionService:
    if not LocalKeyProvider(data).versions():
        LocalKeyProvider(data).create_master_key()
    return EncryptionService(EncryptionServiceConfig(data_dir=data, keyring_refresh_seconds=0))


def test_a_log_rebuilt_under_the_genuine_key_fails_against_an_earlier_checkpoint(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    svc = _service(data)
    audit = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False)
    audit.attach(svc)
    for i in range(6):
        audit.record("key_rotate", actor="op", details={"i": i})
    audit.close()  # anchors the head (seq 6)

    # The insider re-chains six records of their choosing with the real chain key and swaps
    # them in, head pointer included: every record MAC is valid.
    insider = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False, anchors=[])
    insider.attach(svc)
    chain = insider._chain_key()
    forged = chain.seal(
        [AuditEntry(action="key_rotate", actor="someone-else") for _ in range(6)], 0, None
    )
    insider.sink.close()
    db = sqlite3.connect(data / "audit.db")
    with db:
        db.execute("DELETE FROM glc_audit")
        for r in forged:
            e = r.entry
            db.execute(
                "INSERT INTO glc_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (r.seq, e.time, e.actor, e.action, e.outcome, None, None, None, None, None,
                 None, "{}", r.hmac),
            )  # fmt: skip
        db.execute(
            "UPDATE glc_audit_meta SET value = ? WHERE name = 'head'",
            (f"{forged[-1].seq}:{forged[-1].hmac}",),
        )
    db.close()
    # Without the anchor the rebuilt chain is internally consistent...
    bare = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False, anchors=[])
    bare.bind(svc)
    assert bare.verify().ok
    bare.sink.close()
    # ...but the checkpoint anchored before the rewrite names another head at seq 6.
    check = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False)
    check.bind(svc)
    result = check.verify()
    check.sink.close()
    svc.close()
    assert not result.ok
    assert any(p.seq == 6 for p in result.problems), result.problems


# -- the verifier on its own ---------------------------------------------------------------


def _chain(n: int) -> tuple[ChainKey, list[AuditRecord]]:
    key = ChainKey.from_root(DataKey.generate())
    entries = [AuditEntry(action="admin_action", actor=f"op{i}") for i in range(1, n + 1)]
    return key, key.seal(entries, 0, None)


def _check(records: list[AuditRecord], key: ChainKey, **kw: Any) -> VerifyResult:
    head = (records[-1].seq, records[-1].hmac) if records else None
    return _verify(iter(records), key, kw.pop("head", head), **kw)


def test_an_intact_chain_verifies_and_counts_its_records() -> None:
    key, records = _chain(4)
    result = _check(records, key)
    assert result.ok and result.records == 4 and result.problems == []
    assert VerifyResult(0, []).ok


def test_an_edited_record_is_named_once_and_a_foreign_one_breaks_the_link_after_it() -> None:
    key, records = _chain(3)
    edited = AuditRecord(2, AuditEntry(action="admin_action", actor="mallory"), records[1].hmac)
    result = _check([records[0], edited, records[2]], key)
    assert [(p.seq, p.kind) for p in result.problems] == [(2, "edited")]
    _other, theirs = _chain(3)
    result = _check([records[0], theirs[1], records[2]], key)
    assert [(p.seq, p.kind) for p in result.problems] == [(2, "edited"), (3, "edited")]


def test_a_head_beyond_the_last_record_is_a_truncation() -> None:
    key, records = _chain(5)
    result = _check(records[:3], key, head=(5, records[-1].hmac))
    assert [(p.seq, p.kind) for p in result.problems] == [(4, "truncated")]


def test_an_anchored_checkpoint_exposes_a_rewritten_record_and_a_cut_tail() -> None:
    key, records = _chain(4)
    _other, theirs = _chain(4)
    rewritten = _check(records, key, anchored={2: theirs[1].hmac})
    assert [(p.seq, p.kind) for p in rewritten.problems] == [(2, "rewritten")]
    cut = _check(records[:2], key, anchored={4: records[3].hmac})
    assert [(p.seq, p.kind) for p in cut.problems] == [(3, "truncated")]
    assert _check(records, key, anchored={4: records[3].hmac}).ok


def _written(seq: int, time: str) -> AuditRecord:
    return AuditRecord(seq, AuditEntry(action="admin_action", time=time), "00" * 32)


def _cp(seq: int) -> Checkpoint:
    return Checkpoint(seq, "00" * 32, "2026-01-01T00:00:00Z", "00" * 32)


def test_unanchored_records_wait_for_their_grace_then_are_named() -> None:
    last = _written(5, "2026-01-01T00:00:00.000000Z")
    written = 1767225600.0  # 2026-01-01T00:00:00Z
    assert unanchored_records(None, [], grace_seconds=60, now=written) is None
    assert unanchored_records(last, [_cp(5)], grace_seconds=60, now=written + 3600) is None
    assert unanchored_records(last, [_cp(3)], grace_seconds=60, now=written + 30) is None
    late = unanchored_records(last, [_cp(1), _cp(3)], grace_seconds=60, now=written + 61)
    assert late is not None and (late.seq, late.kind) == (4, "unanchored")
    assert "4..5" in late.detail


def test_a_record_time_that_cannot_be_read_is_never_recent() -> None:
    late = unanchored_records(_written(2, "yesterday"), [], grace_seconds=1e9, now=0.0)
    assert late is not None and (late.seq, late.kind) == (1, "unanchored")
