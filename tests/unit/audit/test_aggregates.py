"""Aggregated data-path records: one per operation, data class and actor per window, from
snapshot differences; front-door attributions; counter resets; per-operation mode."""

from __future__ import annotations

from pathlib import Path

from greenlang_crypto.audit import AuditEntry
from greenlang_crypto.audit._aggregates import OperationAggregator
from tests.observed import ObservedStub, observed_stub


def _bound(tmp_path: Path, *, per_op: bool = False) -> tuple[ObservedStub, OperationAggregator]:
    stub = observed_stub(tmp_path, per_operation_events=per_op)
    stub.ops = {("encrypt", "pii"): 5}
    agg = OperationAggregator()
    agg.bind(stub.stats, per_operation=per_op)
    return stub, agg


def _counts(entries: list[AuditEntry]) -> list[tuple[str, str | None, str, object]]:
    return [(e.action, e.data_class, e.actor, e.details["count"]) for e in entries]


def test_unbound_it_records_nothing() -> None:
    agg = OperationAggregator()
    agg.note("encrypt", "pii", "alice")
    assert agg.take("service") == []


def test_counts_only_what_happened_since_the_last_window(tmp_path: Path) -> None:
    stub, agg = _bound(tmp_path)
    assert agg.take("service") == []  # the 5 before binding are not this log's
    stub.ops = {("encrypt", "pii"): 8, ("decrypt", "pci"): 2}
    first = agg.take("service")
    assert _counts(first) == [
        ("decryption_performed", "pci", "service", 2),
        ("encryption_performed", "pii", "service", 3),
    ]
    assert all(e.details["aggregated"] is True for e in first)
    second_start = first[0].time
    stub.ops = {("encrypt", "pii"): 9, ("decrypt", "pci"): 2}
    second = agg.take("service")
    assert _counts(second) == [("encryption_performed", "pii", "service", 1)]
    assert second[0].details["since"] == second_start


def test_attributions_go_to_their_actor_and_never_count_twice(tmp_path: Path) -> None:
    stub, agg = _bound(tmp_path)
    stub.ops = {("encrypt", "pii"): 9}
    agg.note("encrypt", "pii", "alice")
    agg.note("encrypt", "pii", "alice")
    agg.note("encrypt", "pii", "bob")
    assert _counts(agg.take("service")) == [
        ("encryption_performed", "pii", "alice", 2),
        ("encryption_performed", "pii", "bob", 1),
        ("encryption_performed", "pii", "service", 1),
    ]
    # Noted beyond what the snapshot counted: the excess comes off the next window.
    agg.note("encrypt", "pii", "carol")
    agg.note("encrypt", "pii", "carol")
    stub.ops = {("encrypt", "pii"): 10}
    assert _counts(agg.take("service")) == [("encryption_performed", "pii", "carol", 2)]
    stub.ops = {("encrypt", "pii"): 13}
    assert _counts(agg.take("service")) == [("encryption_performed", "pii", "service", 2)]


def test_a_counter_reset_counts_from_zero(tmp_path: Path) -> None:
    stub, agg = _bound(tmp_path)
    stub.ops = {("encrypt", "pii"): 2}  # below the last reading: a new cache
    assert _counts(agg.take("service")) == [("encryption_performed", "pii", "service", 2)]


def test_per_operation_mode_aggregates_nothing(tmp_path: Path) -> None:
    stub, agg = _bound(tmp_path, per_op=True)
    assert agg.per_operation
    agg.note("encrypt", "pii", "alice")
    stub.ops = {("encrypt", "pii"): 50}
    assert agg.take("service") == []


def test_restart_drops_the_parents_attributions(tmp_path: Path) -> None:
    stub, agg = _bound(tmp_path)
    agg.note("encrypt", "pii", "alice")
    stub.ops = {("encrypt", "pii"): 7}
    agg.restart()  # as in a forked child: counts start from the current reading
    stub.ops = {("encrypt", "pii"): 8}
    assert _counts(agg.take("service")) == [("encryption_performed", "pii", "service", 1)]
