"""The audit log: against the observer protocol alone (no service), the sink state it pushes
to its listeners; then attached to a service: aggregation, per-operation records, what a
record may hold, availability when the sink is down, the background flusher."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto.audit import (
    AuditEntry,
    AuditLog,
    AuditQuery,
    AuditRecord,
    ChainKey,
    JsonLinesAuditSink,
    PostgresAuditSink,
    SqliteAuditSink,
    open_audit_sink,
)
from greenlang_crypto.audit.chain import _ROOT_META
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.events import KeyRotated
from greenlang_crypto.exceptions import AuditSinkUnavailableError, DecryptionError
from greenlang_crypto.observing import ObservedService
from greenlang_crypto.service import EncryptionService
from tests.observed import ObservedStub, observed_stub

from .conftest import CTX, PLAINTEXT, audit_stack, traffic


class _FlakySink(SqliteAuditSink):
    """A SQLite sink that refuses writes and probes while ``down``."""

    down = False

    def append(self, entries: Sequence[AuditEntry], chain: ChainKey) -> list[AuditRecord]:
        if self.down:
            raise AuditSinkUnavailableError("down")
        return super().append(entries, chain)

    def ping(self) -> None:
        if self.down:
            raise AuditSinkUnavailableError("down")
        super().ping()


@pytest.fixture
def stub(tmp_path: Path) -> ObservedStub:
    return observed_stub(tmp_path)


@pytest.fixture
def log(tmp_path: Path, stub: ObservedStub) -> Iterator[AuditLog]:
    audit = AuditLog(_FlakySink(tmp_path / "audit.db"), start_thread=False)
    audit.attach(stub)
    yield audit
    audit.close()


def test_the_stub_is_all_an_observer_takes(stub: ObservedStub) -> None:
    assert isinstance(stub, ObservedService)


def test_binds_to_the_protocol_alone_and_writes_a_verifiable_chain(
    tmp_path: Path, stub: ObservedStub, log: AuditLog
) -> None:
    stub.ops = {("encrypt", "pii"): 4}
    log.on_service_event(KeyRotated(old_version=1, new_version=2, key_id="local:master-v1"))
    log.record("key_retire", actor="ops")
    assert log.flush() == 2  # the key event and the aggregate of the 4 encryptions
    records = log.tail(10)
    assert [r.entry.action for r in records] == [
        "key_retire",
        "key_rotated",
        "encryption_performed",
    ]
    assert records[-1].entry.details["count"] == 4
    assert stub.stats_reads >= 2  # at bind, then at the flush
    root = json.loads(log.sink.get_meta(_ROOT_META) or "{}")
    assert root["provider"] == stub.system_keys.provider_name
    assert log.verify().ok
    # The dead-letter defaults to the observed data directory.
    assert log.dead_letter is not None and log.dead_letter.parent == tmp_path


def test_another_log_on_the_same_sink_reads_the_same_chain(
    tmp_path: Path, stub: ObservedStub, log: AuditLog
) -> None:
    log.record("key_retire", actor="ops")
    again = AuditLog(SqliteAuditSink(tmp_path / "audit.db"), start_thread=False, anchors=[])
    again.attach(observed_stub(tmp_path))
    again.record("key_rotate", actor="ops")
    assert again.verify().ok and len(again.tail(10)) == 2
    again.close()


def test_unattached_it_refuses_admin_actions(tmp_path: Path) -> None:
    audit = AuditLog(SqliteAuditSink(tmp_path / "audit.db"), start_thread=False)
    with pytest.raises(AuditSinkUnavailableError, match="not attached"):
        audit.record("key_rotate", actor="ops")
    audit.close()


def test_sink_listeners_get_the_state_now_and_each_transition(log: AuditLog) -> None:
    seen: list[bool] = []
    log.add_sink_listener(seen.append)
    assert seen == [True]
    sink = log.sink
    assert isinstance(sink, _FlakySink)
    sink.down = True
    with pytest.raises(AuditSinkUnavailableError):
        log.record("key_rotate", actor="ops")
    with pytest.raises(AuditSinkUnavailableError):
        log.require_available()
    log.record("key_rotate", actor="ops", required=False)
    log.flush()
    assert seen == [True, False] and not log.sink_up
    sink.down = False
    log.require_available()
    log.record("key_rotate", actor="ops")
    assert seen == [True, False, True] and log.sink_up
    late: list[bool] = []
    sink.down = True
    log.flush()  # the buffered record cannot go yet
    log.add_sink_listener(late.append)
    assert late == [False] and seen[-1] is False


def test_a_failing_listener_breaks_neither_writes_nor_other_listeners(log: AuditLog) -> None:
    def broken(up: bool) -> None:
        raise RuntimeError("listener bug")

    seen: list[bool] = []
    log.add_sink_listener(broken)
    log.add_sink_listener(seen.append)
    sink = log.sink
    assert isinstance(sink, _FlakySink)
    sink.down = True
    with pytest.raises(AuditSinkUnavailableError):
        log.record("key_rotate", actor="ops")
    sink.down = False
    assert log.record("key_rotate", actor="ops") is not None
    assert seen == [True, False, True]


# -- attached to a service -------------------------------------------------------------------


def test_aggregated_mode_counts_without_per_operation_records(
    stack: tuple[EncryptionService, AuditLog],
) -> None:
    svc, audit = stack
    env = traffic(svc, 5)
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
    traffic(svc, 2)
    audit.flush()
    enc = audit.query(AuditQuery(action="encryption_performed"))
    assert [e.entry.details["count"] for e in enc] == [5, 2]


def test_records_hold_digests_never_plaintext_keys_or_context_values(
    stack: tuple[EncryptionService, AuditLog], data_dir: Path
) -> None:
    svc, audit = stack
    traffic(svc, 3)
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
    svc, audit = audit_stack(data_dir, per_op=True)
    traffic(svc, 3)
    audit.flush()
    actions = [r.entry.action for r in audit.tail(100)]
    assert actions.count("encryption_performed") == 3
    assert actions.count("decryption_performed") == 3
    assert not [r for r in audit.tail(100) if r.entry.details.get("aggregated")]
    audit.close()


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
    svc, audit = audit_stack(data_dir, sink, max_buffer=5)
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


def test_background_flusher_writes_without_explicit_flush(data_dir: Path) -> None:
    audit = AuditLog(SqliteAuditSink(data_dir / "audit.db"), flush_interval=0.05)
    svc = EncryptionService(EncryptionServiceConfig(data_dir=data_dir), observers=[audit])
    audit.attach(svc)
    traffic(svc, 2)
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
