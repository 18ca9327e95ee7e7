"""The dead-letter file: private, one JSON line per entry with why it is there, and pending
entries read back exactly once."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from greenlang_crypto.audit import AuditEntry
from greenlang_crypto.audit._dead_letter import append_dead_letter, pending_path, take_pending

ENTRIES = [
    AuditEntry(action="key_rotate", actor="ops", outcome="intent", time="t1", key_version=2),
    AuditEntry(action="key_rotate", actor="ops", outcome="success", time="t2", details={"n": 3}),
]


def test_appends_private_lines_that_say_why(tmp_path: Path) -> None:
    path = tmp_path / "dl" / "audit.deadletter"
    assert append_dead_letter(path, ENTRIES[:1], "rejected")
    assert append_dead_letter(path, ENTRIES[1:], "pending")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(d["why"], d["outcome"], d["time"]) for d in lines] == [
        ("rejected", "intent", "t1"),
        ("pending", "success", "t2"),
    ]
    assert lines[0]["key_version"] == 2 and lines[1]["details"] == {"n": 3}


def test_nothing_to_write_and_an_unwritable_file_report_false(tmp_path: Path) -> None:
    assert not append_dead_letter(tmp_path / "empty", [], "rejected")
    assert not (tmp_path / "empty").exists()
    a_directory = tmp_path / "is-a-dir"
    a_directory.mkdir()
    assert not append_dead_letter(a_directory, ENTRIES, "rejected")


def test_pending_entries_come_back_once_and_junk_lines_are_skipped(tmp_path: Path) -> None:
    dead_letter = tmp_path / "audit.deadletter"
    assert pending_path(dead_letter) == tmp_path / "audit.deadletter.pending"
    assert take_pending(dead_letter) == []
    assert append_dead_letter(pending_path(dead_letter), ENTRIES, "pending")
    with pending_path(dead_letter).open("a") as f:
        f.write("not json\n{}\n")
    assert take_pending(dead_letter) == ENTRIES
    assert not pending_path(dead_letter).exists()
    assert take_pending(dead_letter) == []
