"""The sink contract: the query filter, the rejected-records error, and what every sink that
runs in process (SQLite, JSON lines) does behind :class:`AuditSink`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from greenlang_crypto._core import DataKey
from greenlang_crypto.audit import ChainKey, JsonLinesAuditSink, SqliteAuditSink
from greenlang_crypto.audit.records import AuditEntry, AuditRecord
from greenlang_crypto.audit.sinks.base import AuditQuery, AuditRecordRejectedError, AuditSink
from greenlang_crypto.exceptions import AuditSinkUnavailableError


def _record(seq: int, **kw: object) -> AuditRecord:
    fields: dict[str, object] = {"action": "admin_action", "time": "2026-01-02T00:00:00.000000Z"}
    fields.update(kw)
    return AuditRecord(seq, AuditEntry(**fields), "00")  # type: ignore[arg-type]


def test_an_empty_query_matches_every_record_after_the_cursor() -> None:
    assert AuditQuery().matches(_record(1))
    assert not AuditQuery(after_seq=1).matches(_record(1))
    assert AuditQuery(after_seq=1).matches(_record(2))
    assert AuditQuery().limit == 100


@pytest.mark.parametrize(
    ("query", "hit", "miss"),
    [
        (AuditQuery(action="key_rotate"), {"action": "key_rotate"}, {"action": "admin_action"}),
        (AuditQuery(actor="op"), {"actor": "op"}, {"actor": "eve"}),
        (AuditQuery(outcome="denied"), {"outcome": "denied"}, {}),
        (AuditQuery(key_version=2), {"key_version": 2}, {"key_version": 3}),
        (
            AuditQuery(since="2026-01-02T00:00:00.000000Z"),
            {},
            {"time": "2026-01-01T23:59:59.999999Z"},
        ),
        (
            AuditQuery(until="2026-01-03T00:00:00.000000Z"),
            {},
            {"time": "2026-01-03T00:00:00.000000Z"},
        ),
    ],
    ids=["action", "actor", "outcome", "key-version", "since-inclusive", "until-exclusive"],
)
def test_each_filter_keeps_its_records_and_drops_the_others(
    query: AuditQuery, hit: dict[str, object], miss: dict[str, object]
) -> None:
    assert query.matches(_record(1, **hit))
    assert not query.matches(_record(1, **miss))


def test_a_rejected_batch_is_a_kind_of_unavailability() -> None:
    # Callers that only know about outages still stop on a rejection.
    assert issubclass(AuditRecordRejectedError, AuditSinkUnavailableError)


@pytest.fixture(params=["sqlite", "jsonl"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditSink]:
    made: AuditSink
    if request.param == "sqlite":
        made = SqliteAuditSink(tmp_path / "audit.db")
    else:
        made = JsonLinesAuditSink(tmp_path / "audit.jsonl")
    yield made
    made.close()


def _entries(*actors: str) -> list[AuditEntry]:
    return [AuditEntry(action="admin_action", actor=a) for a in actors]


def test_an_empty_sink_has_no_records_no_head_and_no_meta(sink: AuditSink) -> None:
    assert list(sink.records()) == [] and sink.tail(5) == []
    assert sink.head() is None and sink.get_meta("anything") is None
    assert sink.description
    sink.ping()


def test_append_chains_after_the_tail_and_moves_the_head(sink: AuditSink) -> None:
    chain = ChainKey.from_root(DataKey.generate())
    first = sink.append(_entries("a", "b"), chain)
    second = sink.append(_entries("c"), chain)
    assert [r.seq for r in first + second] == [1, 2, 3]
    assert chain.check(second[0], first[-1].hmac)
    assert list(sink.records()) == first + second
    assert sink.tail(2) == [first[1], second[0]]
    assert sink.head() == (3, second[0].hmac)


def test_query_filters_ascending_with_a_cursor_and_a_limit(sink: AuditSink) -> None:
    chain = ChainKey.from_root(DataKey.generate())
    sink.append(_entries("a", "b", "a", "c", "a"), chain)
    assert [r.seq for r in sink.query(AuditQuery(actor="a"))] == [1, 3, 5]
    assert [r.seq for r in sink.query(AuditQuery(actor="a", after_seq=1, limit=1))] == [3]


def test_meta_keeps_the_first_value_stored(sink: AuditSink) -> None:
    assert sink.put_meta_if_absent("root", "first") == "first"
    assert sink.put_meta_if_absent("root", "second") == "first"
    assert sink.get_meta("root") == "first"
