"""The job table of column jobs on PostgreSQL: planning, claims, leases, release, counting."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Engine

from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy.migrate import ColumnJob
from tests.integration.sqlalchemy._jobs import fill_plaintext, people_table, spec

pytestmark = pytest.mark.integration


@pytest.fixture
def people(pg_engine: Engine, service: EncryptionService, table_name: str) -> Iterator[Any]:
    md = MetaData()
    t = people_table(service, table_name, md)
    md.create_all(pg_engine)
    fill_plaintext(pg_engine, table_name, 90, start=1)
    yield t
    md.drop_all(pg_engine)


def job(engine: Engine, service: EncryptionService, name: str, **kw: Any) -> ColumnJob:
    kw.setdefault("lease_seconds", 30.0)
    return ColumnJob(engine, service, spec(name), **kw)


def ranges(engine: Engine, job_name: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT range_id, lo, hi, state, owner FROM encryption.glc_job_ranges "
                    "WHERE job = :j ORDER BY range_id"
                ),
                {"j": job_name},
            )
        ]


def test_a_plan_splits_the_keys_into_ranges_once(
    pg_engine: Engine, service: EncryptionService, people: Any
) -> None:
    first = job(pg_engine, service, people.name, ranges=3, worker="a")
    first.ensure_tables()
    first._plan()
    assert first.run_id is not None
    assert first.job_name == f"{first.job_base}@{first.run_id}"
    planned = ranges(pg_engine, first.job_name)
    assert [r[0] for r in planned] == [0, 1, 2]
    # Open at both ends; each range starts where the previous one ends.
    assert planned[0][1] is None and planned[-1][2] is None
    assert [r[2] for r in planned[:-1]] == [r[1] for r in planned[1:]]
    assert {r[3] for r in planned} == {"pending"}
    # A second worker joins the unfinished run instead of planning another.
    second = job(pg_engine, service, people.name, ranges=3, worker="b")
    second._plan()
    assert second.job_name == first.job_name
    assert ranges(pg_engine, first.job_name) == planned


def test_workers_claim_different_ranges_and_release_them(
    pg_engine: Engine, service: EncryptionService, people: Any
) -> None:
    a = job(pg_engine, service, people.name, ranges=2, worker="a")
    a.ensure_tables()
    a._plan()
    b = job(pg_engine, service, people.name, ranges=2, worker="b", run_id=a.run_id)
    b._plan()
    claim_a, claim_b = a._claim(), b._claim()
    assert claim_a is not None and claim_b is not None
    assert claim_a[0] != claim_b[0]
    assert b._claim() == claim_b  # a worker takes its own range back at once
    assert job(pg_engine, service, people.name, worker="c", run_id=a.run_id)._claim() is None
    open_ranges = a._open_ranges()
    assert {(r.range_id, r.owner) for r in open_ranges} == {(claim_a[0], "a"), (claim_b[0], "b")}
    assert all(0 < r.seconds_left <= 30.0 for r in open_ranges)
    a._release()
    states = {r[0]: (r[3], r[4]) for r in ranges(pg_engine, a.job_name)}
    assert states[claim_a[0]] == ("pending", None)
    assert states[claim_b[0]] == ("running", "b")


def test_an_expired_lease_is_taken_over(
    pg_engine: Engine, service: EncryptionService, people: Any
) -> None:
    a = job(pg_engine, service, people.name, worker="a", lease_seconds=0.05)
    a.ensure_tables()
    a._plan()
    assert a._claim() == (0, None)
    with pg_engine.begin() as conn:
        conn.execute(text("SELECT pg_sleep(0.1)"))
    b = job(pg_engine, service, people.name, worker="b", run_id=a.run_id)
    assert b._claim() == (0, None)
    assert [r.owner for r in b._open_ranges()] == ["b"]


def test_count_remaining_counts_what_still_needs_work(
    pg_engine: Engine, service: EncryptionService, people: Any
) -> None:
    j = job(pg_engine, service, people.name, batch_size=40)
    assert j.count_remaining() == 90
    report = j.run()
    assert report.remaining == j.count_remaining() == 0
    with pg_engine.begin() as conn:
        conn.execute(text(f"UPDATE {people.name} SET email_bidx = NULL WHERE id <= 5"))
    assert j.count_remaining() == 5


def test_reset_forgets_every_run(
    pg_engine: Engine, service: EncryptionService, people: Any
) -> None:
    j = job(pg_engine, service, people.name, ranges=2)
    j.ensure_tables()
    j._plan()
    assert len(ranges(pg_engine, j.job_name)) == 2
    j.reset()
    assert ranges(pg_engine, j.job_name) == []
