"""The admin-action recorder on its own: intent before the change, outcome after, fail closed
when the intent cannot be stored, and the key-change guard's actor and nesting."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from greenlang_crypto.audit import AuditEntry, AuditRecord, acting_as, current_actor
from greenlang_crypto.audit._recorder import AdminRecorder
from greenlang_crypto.exceptions import AuditSinkUnavailableError


class _Recorder(AdminRecorder):
    """Writes to a list; ``down`` makes synchronous writes fail as a sink outage would."""

    def __init__(self) -> None:
        self.actor = "service"
        self._wake = threading.Event()
        self.written: list[AuditEntry] = []
        self.buffered: list[AuditEntry] = []
        self.down = False

    def _write(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        if self.down:
            raise AuditSinkUnavailableError("down")
        start = len(self.written)
        self.written.extend(entries)
        return [AuditRecord(start + i + 1, e, "00") for i, e in enumerate(entries)]

    def _enqueue(self, entry: AuditEntry) -> None:
        self.buffered.append(entry)


def _trail(entries: list[AuditEntry]) -> list[tuple[str, str, str]]:
    return [(e.action, e.outcome, e.actor) for e in entries]


def test_record_writes_now_or_buffers_when_not_required() -> None:
    rec = _Recorder()
    sealed = rec.record("api_decrypt", actor="alice", reason="ticket", details={"n": 1})
    assert sealed is not None and sealed.entry.reason == "ticket"
    assert rec.record("api_denied", actor="mallory", outcome="denied", required=False) is None
    assert _trail(rec.written) == [("api_decrypt", "success", "alice")]
    assert _trail(rec.buffered) == [("api_denied", "denied", "mallory")]
    assert rec._wake.is_set()  # the buffered record is flushed soon


def test_audited_writes_intent_then_outcome_with_the_blocks_details() -> None:
    rec = _Recorder()
    with rec.audited("key_rotate", "ops", key_version=1, details={"why": "drill"}) as extra:
        assert _trail(rec.written) == [("key_rotate", "intent", "ops")]
        extra["key_version"] = 2
        extra["rows"] = 10
    done = rec.written[-1]
    assert (done.outcome, done.key_version, done.details) == (
        "success",
        2,
        {"why": "drill", "rows": 10},
    )


def test_a_failed_block_is_recorded_and_reraised() -> None:
    rec = _Recorder()
    with pytest.raises(KeyError), rec.audited("key_retire", "ops"):
        raise KeyError("boom")
    assert _trail(rec.written) == [
        ("key_retire", "intent", "ops"),
        ("key_retire", "failure", "ops"),
    ]
    assert rec.written[-1].details["error_type"] == "KeyError"


def test_no_stored_intent_no_change_and_a_lost_outcome_is_buffered() -> None:
    rec = _Recorder()
    rec.down = True
    ran = False
    with pytest.raises(AuditSinkUnavailableError), rec.audited("key_rotate", "ops"):
        ran = True
    assert not ran and rec.written == [] and rec.buffered == []
    rec.down = False
    with rec.audited("key_rotate", "ops"):
        rec.down = True  # the sink fails after the change happened
    assert _trail(rec.buffered) == [("key_rotate", "success", "ops")]


def test_key_change_takes_the_front_doors_actor_and_is_silent_inside_audited() -> None:
    rec = _Recorder()
    assert current_actor("fallback") == "fallback"
    with acting_as("cli:root"):
        assert current_actor("fallback") == "cli:root"
        with rec.key_change("key_rewrap", {"count": 3}):
            pass
    assert _trail(rec.written) == [
        ("key_rewrap", "intent", "cli:root"),
        ("key_rewrap", "success", "cli:root"),
    ]
    rec.written.clear()
    with rec.audited("keys_rotate_command", "api:alice"), rec.key_change("key_rotate", {}):
        pass
    assert [e.action for e in rec.written] == ["keys_rotate_command"] * 2
    with rec.key_change("key_rotate", {}):  # outside any block: recorded with the log's actor
        pass
    assert _trail(rec.written)[-1] == ("key_rotate", "success", "service")
