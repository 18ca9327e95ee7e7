"""The audit log: records, aggregation, the HMAC chain and its verifier, sinks, availability."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import cli
from greenlang_crypto.audit import (
    AUDIT_CONTEXT,
    AuditEntry,
    AuditLog,
    AuditQuery,
    JsonLinesAuditSink,
    PostgresAuditSink,
    SqliteAuditSink,
    open_audit_sink,
)
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import AuditSinkUnavailableError, DecryptionError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

CTX = {"tenant_id": "tenant-secret-name", "data_class": "pii"}
PLAINTEXT = b"audit-must-never-see-this"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    LocalKeyProvider(d).create_master_key()
    return d


def _stack(
    data_dir: Path, sink: Any = None, *, per_op: bool = False, **kw: Any
) -> tuple[EncryptionService, AuditLog]:
    audit = AuditLog(sink or SqliteAuditSink(data_dir / "audit.db"), start_thread=False, **kw)
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=data_dir), observers=[audit], per_operation_events=per_op
    )
    audit.attach(svc)
    return svc, audit


@pytest.fixture
def stack(data_dir: Path) -> Iterator[tuple[EncryptionService, AuditLog]]:
    svc, audit = _stack(data_dir)
    yield svc, audit
    audit.close()


def _traffic(svc: EncryptionService, n: int = 5) -> bytes:
    env = b""
    for _ in range(n):
        env = svc.encrypt(PLAINTEXT, CTX)
        assert svc.decrypt(env, CTX) == PLAINTEXT
    return env


def test_aggregated_mode_counts_without_per_operation_records(
    stack: tuple[EncryptionService, AuditLog],
) -> None:
    svc, audit = stack
    env = _traffic(svc, 5)
    audit.note_operation("decrypt", "pii", "alice")
    with pytest.raises(DecryptionError):
        svc.decrypt(env, {**CTX, "tenant_id": "other"})
    audit.flush()
    by_action: dict[str, list[Any]] = {}
    for r in audit.tail(100):
        by_action.setdefault(r.entry.action, []).append(r.entry)
    enc = by_action["encryption_performed"]
    assert [(e.actor, e.details["count"], e.data_class) for e in enc] == [("service", 5, "pii")]
    dec = sorted((e.actor, e.details["count"]) for e in by_action["decryption_performed"])
    assert dec == [("alice", 1), ("service", 4)]
    assert by_action["key_generated"][0].key_version == 1
    assert by_action["key_generated"][0].key_id == "local:master-v1"
    failed = by_action["decryption_failed"][0]
    assert failed.outcome == "failure" and failed.details["error_type"] == "DecryptionError"
    assert "key_cache_hit" not in by_action
    # A second flush with no traffic writes no empty aggregates.
    assert audit.flush() == 0
    _traffic(svc, 2)
    audit.flush()
    enc = audit.query(AuditQuery(action="encryption_performed"))
    assert [e.entry.details["count"] for e in enc] == [5, 2]


def test_records_hold_digests_never_plaintext_keys_or_context_values(
    stack: tuple[EncryptionService, AuditLog], data_dir: Path
) -> None:
    svc, audit = stack
    _traffic(svc, 3)
    svc.rotate()
    audit.flush()
    raw = (data_dir / "audit.db").read_bytes()
    dump = json.dumps([r.to_dict() for r in audit.tail(1000)])
    for text in (dump.encode(), raw):
        assert PLAINTEXT not in text
        assert b"tenant-secret-name" not in text
    digests = {r.entry.context_digest for r in audit.tail(1000)} - {None}
    assert digests and all(len(d) == 64 for d in digests if d)


def test_per_operation_mode_writes_one_record_per_operation(data_dir: Path) -> None:
    svc, audit = _stack(data_dir, per_op=True)
    _traffic(svc, 3)
    audit.flush()
    actions = [r.entry.action for r in audit.tail(100)]
    assert actions.count("encryption_performed") == 3
    assert actions.count("decryption_performed") == 3
    assert not [r for r in audit.tail(100) if r.entry.details.get("aggregated")]
    audit.close()


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
    _svc1, a1 = _stack(data_dir)
    _svc2, a2 = _stack(data_dir)

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
    _svc3, a3 = _stack(data_dir)
    result = a3.verify()
    assert result.ok, result.problems
    assert result.records == 50
    a3.close()


# -- tamper evidence -------------------------------------------------------------------------


def _sqlite_log(data_dir: Path, n: int = 6) -> AuditLog:
    _svc, audit = _stack(data_dir)
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
    _svc, audit = _stack(data_dir, JsonLinesAuditSink(path))
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


# -- availability ----------------------------------------------------------------------------


class DownSink:
    """A sink that is down while ``down`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.description = "test-sink"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)

        def call(*a: Any, **k: Any) -> Any:
            if self.down:
                raise AuditSinkUnavailableError("test sink down")
            return attr(*a, **k)

        return call


def test_sink_down_required_records_raise_and_events_buffer(data_dir: Path) -> None:
    sink = DownSink(SqliteAuditSink(data_dir / "audit.db"))
    svc, audit = _stack(data_dir, sink, max_buffer=5)
    sink.down = True
    with pytest.raises(AuditSinkUnavailableError):
        audit.record("key_rotate", actor="root", outcome="intent")
    with pytest.raises(AuditSinkUnavailableError):
        audit.require_available()
    assert audit.sink_up is False
    assert audit.record("access_denied", actor="eve", outcome="denied", required=False) is None
    for i in range(8):
        svc.encrypt(PLAINTEXT, {"tenant_id": f"t{i}", "data_class": "pii"})
    audit.flush()
    assert audit.buffered == 5 and audit.dropped > 0
    sink.down = False
    audit.require_available()
    assert audit.flush() > 0 and audit.buffered == 0
    actions = [r.entry.action for r in audit.tail(50)]
    assert "audit_events_dropped" in actions
    dropped = audit.query(AuditQuery(action="audit_events_dropped"))[0].entry
    assert dropped.details["count"] == audit.dropped
    assert audit.verify().ok
    audit.close()


def test_sqlite_write_lock_times_out(data_dir: Path) -> None:
    sink = SqliteAuditSink(data_dir / "audit.db", timeout=0.2)
    _svc, audit = _stack(data_dir, sink)
    blocker = sqlite3.connect(data_dir / "audit.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(AuditSinkUnavailableError):
            audit.record("key_rotate", actor="root", outcome="intent")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert audit.record("key_rotate", actor="root", outcome="intent") is not None
    audit.close()


def test_background_flusher_writes_without_explicit_flush(data_dir: Path) -> None:
    audit = AuditLog(SqliteAuditSink(data_dir / "audit.db"), flush_interval=0.05)
    svc = EncryptionService(EncryptionServiceConfig(data_dir=data_dir), observers=[audit])
    audit.attach(svc)
    _traffic(svc, 2)
    deadline = __import__("time").monotonic() + 5
    while not audit.query(AuditQuery(action="encryption_performed")):
        assert __import__("time").monotonic() < deadline
        __import__("time").sleep(0.02)
    audit.close()


def test_open_audit_sink_urls(tmp_path: Path) -> None:
    assert isinstance(open_audit_sink(None, tmp_path), SqliteAuditSink)
    assert isinstance(open_audit_sink(f"sqlite:///{tmp_path}/a.db", tmp_path), SqliteAuditSink)
    assert isinstance(open_audit_sink(f"jsonl://{tmp_path}/a.jsonl", tmp_path), JsonLinesAuditSink)
    assert isinstance(open_audit_sink("postgresql://u@h/db", tmp_path), PostgresAuditSink)
    with pytest.raises(ValueError):
        open_audit_sink("ftp://x", tmp_path)


def test_entry_defaults_are_non_secret() -> None:
    e = AuditEntry(action="x")
    assert e.actor == "service" and e.outcome == "success" and e.time.endswith("Z")


@pytest.mark.integration
def test_postgres_sink_chain_and_tamper(data_dir: Path) -> None:
    url = os.environ.get("GLC_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("GLC_PG_URL is not set (CI)")
        pytest.skip("GLC_PG_URL not set; start services with scripts/services.sh")
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    # The sink keeps its tables in the encryption schema (where V011 puts them) and moves a
    # log an older release left in public there; start from a clean slate in both.
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in ("encryption", "public"):
            conn.execute(f"DROP TABLE IF EXISTS {schema}.glc_audit")
            conn.execute(f"DROP TABLE IF EXISTS {schema}.glc_audit_meta")
    _svc, audit = _stack(data_dir, PostgresAuditSink(url))
    for i in range(5):
        audit.record("admin_action", actor=f"op{i}")
    assert audit.verify().ok
    page = audit.query(AuditQuery(actor="op3"))
    assert [r.seq for r in page] == [4]
    with psycopg.connect(dsn, autocommit=True, options="-c search_path=encryption") as conn:
        conn.execute("UPDATE glc_audit SET actor = 'mallory' WHERE seq = 2")
    result = audit.verify()
    assert [(p.seq, p.kind) for p in result.problems] == [(2, "edited")]
    audit.close()
