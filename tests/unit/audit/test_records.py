"""Audit entries and records: safe defaults, cleaning what a sink could not store, the canonical
encoding the chain MACs cover, and the checkpoint line format."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import pytest

from greenlang_crypto.audit import AuditEntry
from greenlang_crypto.audit.records import (
    MAX_FIELD_CHARS,
    AuditRecord,
    Checkpoint,
    canonical_bytes,
    checkpoint_bytes,
    clean_text,
    entry_from_dict,
    entry_to_dict,
)

TIME = "2026-01-01T00:00:00.000000Z"


def test_entry_defaults_are_non_secret() -> None:
    e = AuditEntry(action="x")
    assert e.actor == "service" and e.outcome == "success" and e.time.endswith("Z")


def test_clean_text_escapes_what_no_sink_can_store_and_bounds_the_length() -> None:
    assert clean_text("plain") == "plain"
    assert clean_text("j\udcf6rg") == "j\\udcf6rg"
    assert clean_text("a\x00b") == "a\\x00b"
    long = clean_text("x" * (MAX_FIELD_CHARS + 50))
    assert long == "x" * MAX_FIELD_CHARS + "…"


def test_an_entry_cleans_its_fields_and_drops_what_is_not_a_key_version() -> None:
    e = AuditEntry(
        action="admin_action",
        actor="j\udcf6rg",
        key_version=True,  # type: ignore[arg-type]
        details={"n": float("nan"), "p": PurePosixPath("/x"), 3: "k"},  # type: ignore[dict-item]
    )
    assert e.actor == "j\\udcf6rg"
    assert e.key_version is None
    assert e.details == {"n": None, "p": "/x", "3": "k"}
    assert AuditEntry(action="x", key_version="7").key_version is None  # type: ignore[arg-type]
    assert AuditEntry(action="x", key_version=7).key_version == 7


def test_canonical_bytes_are_sorted_compact_ascii_and_bind_the_sequence_number() -> None:
    e = AuditEntry(action="admin_action", actor="zoë", time=TIME, details={"b": 1, "a": 2})
    raw = canonical_bytes(3, e)
    raw.decode("ascii")  # non-ASCII is escaped
    doc = json.loads(raw)
    assert list(doc) == sorted(doc) and doc["seq"] == 3 and doc["actor"] == "zoë"
    assert b" " not in raw
    assert canonical_bytes(4, e) != raw
    assert AuditRecord(3, e, "00").canonical_bytes() == raw


def test_entries_and_records_survive_their_dict_forms() -> None:
    e = AuditEntry(
        action="key_rotate",
        actor="op",
        outcome="intent",
        time=TIME,
        key_id="local:master-v1",
        key_version=2,
        context_digest="ab" * 32,
        data_class="pii",
        request_id="r1",
        reason="why",
        details={"count": 3},
    )
    assert entry_from_dict(entry_to_dict(e)) == e
    record = AuditRecord(9, e, "cd" * 32)
    doc = record.to_dict()
    assert doc["seq"] == 9 and doc["hmac"] == "cd" * 32 and doc["details"] == {"count": 3}
    assert AuditRecord.from_dict(json.loads(json.dumps(doc))) == record


def test_checkpoint_bytes_can_never_be_a_record_encoding() -> None:
    raw = checkpoint_bytes(1, "ab", TIME)
    assert raw.startswith(b"glc-audit-checkpoint/v1\x00")
    assert not raw.startswith(b"{")
    assert checkpoint_bytes(2, "ab", TIME) != raw


def test_a_checkpoint_round_trips_through_its_json_line() -> None:
    cp = Checkpoint(5, "ab" * 32, TIME, "cd" * 32)
    line = cp.to_json()
    assert "\n" not in line and " " not in line
    assert Checkpoint.from_json(line) == cp
    assert Checkpoint.from_json(line.encode()) == cp


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"seq": 1, "hmac": "a", "time": "t"}',
        '{"seq": -1, "hmac": "a", "time": "t", "mac": "m"}',
        '{"seq": true, "hmac": "a", "time": "t", "mac": "m"}',
        '{"seq": "1", "hmac": "a", "time": "t", "mac": "m"}',
    ],
)
def test_what_is_not_a_checkpoint_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Checkpoint.from_json(text)
