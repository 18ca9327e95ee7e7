"""The JSON-lines sink: one record per line in a private file, the head and the root key in a
sidecar, unreadable lines kept as records that fail their check."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from greenlang_crypto._core import DataKey
from greenlang_crypto.audit import ChainKey, JsonLinesAuditSink
from greenlang_crypto.audit.records import AuditEntry
from greenlang_crypto.exceptions import AuditSinkUnavailableError


def _chain() -> ChainKey:
    return ChainKey.from_root(DataKey.generate())


def _entries(n: int) -> list[AuditEntry]:
    return [AuditEntry(action="admin_action", actor=f"op{i}") for i in range(n)]


def test_each_record_is_one_sorted_json_line_in_a_private_file(tmp_path: Path) -> None:
    sink = JsonLinesAuditSink(tmp_path / "audit.jsonl")
    records = sink.append(_entries(2), _chain())
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [r.to_dict() for r in records]
    assert all(list(json.loads(line)) == sorted(json.loads(line)) for line in lines)
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o777 == 0o600
    assert sink.description == f"jsonl://{tmp_path / 'audit.jsonl'}"


def test_the_head_and_meta_live_in_a_private_sidecar(tmp_path: Path) -> None:
    sink = JsonLinesAuditSink(tmp_path / "audit.jsonl")
    sink.put_meta_if_absent("root", "wrapped")
    records = sink.append(_entries(3), _chain())
    sidecar = tmp_path / "audit.jsonl.meta.json"
    assert json.loads(sidecar.read_text()) == {"root": "wrapped", "head": f"3:{records[-1].hmac}"}
    assert sidecar.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.tmp"))


def test_appending_nothing_touches_nothing(tmp_path: Path) -> None:
    sink = JsonLinesAuditSink(tmp_path / "audit.jsonl")
    assert sink.append([], _chain()) == []
    assert not (tmp_path / "audit.jsonl").exists()


def test_a_later_writer_chains_after_the_last_line(tmp_path: Path) -> None:
    chain = _chain()
    JsonLinesAuditSink(tmp_path / "audit.jsonl").append(_entries(2), chain)
    again = JsonLinesAuditSink(tmp_path / "audit.jsonl")
    third = again.append(_entries(1), chain)[0]
    assert third.seq == 3
    assert chain.check(third, again.tail(2)[0].hmac)


def test_an_unparseable_line_becomes_a_record_that_can_never_check(tmp_path: Path) -> None:
    sink = JsonLinesAuditSink(tmp_path / "audit.jsonl")
    chain = _chain()
    sink.append(_entries(1), chain)
    with (tmp_path / "audit.jsonl").open("a") as f:
        f.write("{not json\n\n")
    records = list(sink.records())
    assert [r.seq for r in records] == [1, -2]
    assert records[1].entry.action == "_unparseable"
    assert not chain.check(records[1], records[0].hmac)


def test_an_unreadable_sidecar_makes_the_sink_unavailable(tmp_path: Path) -> None:
    sink = JsonLinesAuditSink(tmp_path / "audit.jsonl")
    (tmp_path / "audit.jsonl.meta.json").write_text("{broken")
    with pytest.raises(AuditSinkUnavailableError, match="metadata unreadable"):
        sink.get_meta("root")


def test_a_file_locked_by_another_process_times_out(tmp_path: Path) -> None:
    sink = JsonLinesAuditSink(tmp_path / "audit.jsonl", timeout=0.1)
    sink.ping()
    with (tmp_path / "audit.jsonl").open("ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(AuditSinkUnavailableError, match="locked"):
            sink.append(_entries(1), _chain())
    assert sink.append(_entries(1), _chain())[0].seq == 1
