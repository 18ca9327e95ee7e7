"""Refusal counts: what one ``access_refused`` record per source says, and the memory bounds.

The audit log is a stand-in that keeps the records it is given; the aggregator writing into a
real audit log behind a running API is covered in ``tests/api/test_refusal_audit.py``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from greenlang_crypto import _forks
from greenlang_crypto.api.refusals import (
    MAX_ROUTES,
    MAX_SUBJECTS,
    OVERFLOW_SOURCE,
    REASONS,
    UNKNOWN_SOURCE,
    RefusalAggregator,
)
from greenlang_crypto.audit.records import MAX_FIELD_CHARS


class Audit:
    """Keeps ``record`` calls."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.written = threading.Event()

    def record(self, action: str, **kwargs: Any) -> None:
        self.records.append({"action": action, **kwargs})
        self.written.set()


@pytest.fixture
def audit() -> Audit:
    return Audit()


@pytest.fixture
def agg(audit: Audit) -> Any:
    a = RefusalAggregator(audit, interval=3600)  # type: ignore[arg-type]
    yield a
    a.close()


def details_by_source(audit: Audit) -> dict[str, dict[str, Any]]:
    return {r["details"]["source"]: r["details"] for r in audit.records}


def test_the_reasons_are_a_fixed_set() -> None:
    assert {
        "no_token",
        "bad_token",
        "permission",
        "fleet_scope",
        "no_tenant",
        "tenant_mismatch",
        "other",
    } == REASONS


def test_one_record_per_source_counts_and_splits_its_refusals(
    agg: RefusalAggregator, audit: Audit
) -> None:
    for _ in range(3):
        agg.note("10.0.0.1", "bad_token", route="POST /api/v1/encryption/encrypt")
    agg.note("10.0.0.1", "permission", "alice", "POST /api/v1/encryption/keys/rotate")
    agg.note("10.0.0.2", "no_token")
    assert agg.pending() == 5
    assert agg.flush() == 2
    assert agg.pending() == 0
    assert [(r["action"], r["actor"], r["outcome"], r["required"]) for r in audit.records] == [
        ("access_refused", "api", "denied", False)
    ] * 2
    first = details_by_source(audit)["10.0.0.1"]
    since = first.pop("since")
    assert isinstance(since, str) and since.endswith("Z")
    assert first == {
        "aggregated": True,
        "source": "10.0.0.1",
        "count": 4,
        "unauthenticated": 3,
        "forbidden": 1,
        "reason:bad_token": 3,
        "reason:permission": 1,
        "route:POST /api/v1/encryption/encrypt": 3,
        "route:POST /api/v1/encryption/keys/rotate": 1,
        "subjects": '["alice"]',
    }
    second = details_by_source(audit)["10.0.0.2"]
    assert (second["count"], second["unauthenticated"], second["forbidden"]) == (1, 1, 0)
    assert "subjects" not in second and "subjects_omitted" not in second


def test_nothing_pending_writes_nothing(agg: RefusalAggregator, audit: Audit) -> None:
    assert agg.flush() == 0
    assert audit.records == []


def test_an_unknown_reason_is_counted_as_other_and_no_source_as_unknown(
    agg: RefusalAggregator, audit: Audit
) -> None:
    agg.note(None, "made-up-by-a-caller")
    agg.flush()
    details = details_by_source(audit)[UNKNOWN_SOURCE]
    assert details["reason:other"] == 1 and details["forbidden"] == 1
    assert "reason:made-up-by-a-caller" not in details


def test_sources_past_the_bound_share_one_counter(audit: Audit) -> None:
    agg = RefusalAggregator(audit, interval=3600, max_sources=3)  # type: ignore[arg-type]
    for i in range(10):
        agg.note(f"10.0.0.{i}", "no_token")
    agg.note("10.0.0.1", "no_token")  # already counted apart: stays apart
    agg.close()
    by_source = details_by_source(audit)
    assert set(by_source) == {"10.0.0.0", "10.0.0.1", "10.0.0.2", OVERFLOW_SOURCE}
    assert by_source[OVERFLOW_SOURCE]["count"] == 7
    assert by_source["10.0.0.1"]["count"] == 2


def test_subjects_and_routes_are_bounded_per_source(agg: RefusalAggregator, audit: Audit) -> None:
    for i in range(MAX_SUBJECTS + 4):
        agg.note("s", "permission", f"user{i:02d}", f"GET /r{i}")
    agg.note("s", "permission", "user00", "GET /r0")  # known subject and route
    for i in range(MAX_ROUTES + 5):
        agg.note("s", "permission", None, f"GET /more{i}")
    agg.flush()
    details = details_by_source(audit)["s"]
    subjects = json.loads(details["subjects"])
    assert subjects == [f"user{i:02d}" for i in range(MAX_SUBJECTS)]
    assert details["subjects_omitted"] == 4
    routes = {k: v for k, v in details.items() if k.startswith("route:")}
    assert len(routes) == MAX_ROUTES
    assert routes["route:GET /r0"] == 2


def test_the_subject_list_always_fits_one_audit_field(agg: RefusalAggregator, audit: Audit) -> None:
    long_subjects = [chr(ord("a") + i) * 250 for i in range(MAX_SUBJECTS)]
    for subject in long_subjects:
        agg.note("s", "permission", subject)
    agg.flush()
    details = details_by_source(audit)["s"]
    kept = json.loads(details["subjects"])
    assert len(details["subjects"]) <= MAX_FIELD_CHARS
    assert kept == sorted(kept) and set(kept) < set(long_subjects)
    assert details["subjects_omitted"] == MAX_SUBJECTS - len(kept)


def test_each_interval_starts_where_the_last_one_ended(
    agg: RefusalAggregator, audit: Audit
) -> None:
    agg.note("a", "no_token")
    agg.flush()
    time.sleep(0.002)
    agg.note("a", "no_token")
    agg.flush()
    first, second = (r["details"]["since"] for r in audit.records)
    assert first <= second


def test_the_writer_thread_writes_every_interval(audit: Audit) -> None:
    agg = RefusalAggregator(audit, interval=0.05)  # type: ignore[arg-type]
    try:
        agg.note("10.0.0.9", "no_token")
        assert audit.written.wait(5.0)
        assert audit.records[0]["details"]["source"] == "10.0.0.9"
        assert agg.pending() == 0
    finally:
        agg.close()


def test_close_stops_the_writer_and_writes_what_is_pending(audit: Audit) -> None:
    agg = RefusalAggregator(audit, interval=3600)  # type: ignore[arg-type]
    agg.note("a", "no_token")
    thread = agg._thread
    assert thread is not None and thread.is_alive()
    agg.close()
    assert not thread.is_alive()
    assert [r["details"]["count"] for r in audit.records] == [1]
    # A refusal after close (a request still in flight) starts a new writer.
    agg.note("b", "no_token")
    assert agg._thread is not None and agg._thread is not thread
    agg.close()
    assert len(audit.records) == 2


def test_a_failing_audit_log_does_not_kill_the_writer(audit: Audit) -> None:
    calls: list[int] = []

    class Failing(Audit):
        def record(self, action: str, **kwargs: Any) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("sink down")
            super().record(action, **kwargs)

    failing = Failing()
    agg = RefusalAggregator(failing, interval=0.05)  # type: ignore[arg-type]
    try:
        agg.note("a", "no_token")
        deadline = time.monotonic() + 5
        while len(calls) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        agg.note("a", "bad_token")
        assert failing.written.wait(5.0)
        assert failing.records[0]["details"]["reason:bad_token"] == 1
    finally:
        agg.close()


def test_the_interval_must_be_positive(audit: Audit) -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        RefusalAggregator(audit, interval=0)  # type: ignore[arg-type]


def test_the_lock_is_renewed_in_a_forked_child(agg: RefusalAggregator) -> None:
    assert _forks._lock_owners[agg] == ("_lock",)
