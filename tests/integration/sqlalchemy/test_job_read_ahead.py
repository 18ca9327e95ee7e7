"""Read-ahead of column jobs: the next batch is read and planned before the current commits.

What is read ahead is read outside the batch's transaction, so the application may change
those rows before the batch writes them. The job must then write nothing over the new
values, quarantine nothing on a value that was fixed meanwhile, and fall back to its own
read when its checkpoint moved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import MetaData, select, text
from sqlalchemy.engine import Engine

from greenlang_crypto import parse_envelope
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy.migrate import ColumnJob
from tests.integration.sqlalchemy._jobs import fill_plaintext, people_table, spec

pytestmark = pytest.mark.integration


@pytest.fixture
def people(pg_engine: Engine, service: EncryptionService, table_name: str) -> Iterator[Any]:
    md = MetaData()
    t = people_table(service, table_name, md)
    md.create_all(pg_engine)
    yield t
    md.drop_all(pg_engine)


def _after_read_ahead(
    monkeypatch: pytest.MonkeyPatch, act: Callable[[list[str]], None]
) -> list[list[str]]:
    """Runs ``act(pks read ahead)`` once each read-ahead has read and planned its batch."""
    seen: list[list[str]] = []
    real = ColumnJob._prepare

    def prepare(self: ColumnJob, after: str, hi: str | None) -> Any:
        prepared = real(self, after, hi)
        if prepared is not None and prepared.rows:
            pks = [r.pk_text for r in prepared.rows]
            seen.append(pks)
            act(pks)
        return prepared

    monkeypatch.setattr(ColumnJob, "_prepare", prepare)
    return seen


def _emails(engine: Engine, people: Any) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(people.c.id, people.c.email)).all())


def test_rows_the_application_changed_after_the_read_ahead_keep_the_new_value(
    pg_engine: Engine, service: EncryptionService, people: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_plaintext(pg_engine, people.name, 60)
    assert ColumnJob(pg_engine, service, spec(people.name), batch_size=20).run().written == 60
    service.rotate()
    changed: dict[int, str] = {}

    def app_writes(pks: list[str]) -> None:
        # The application updates one row of each batch read ahead (a new value, sealed by
        # the service under the new primary, through the model's own column type).
        pk = int(pks[len(pks) // 2])
        changed[pk] = f"changed{pk}@example.com"
        with pg_engine.begin() as conn:
            conn.execute(people.update().where(people.c.id == pk).values(email=changed[pk]))

    seen = _after_read_ahead(monkeypatch, app_writes)
    job = ColumnJob(pg_engine, service, spec(people.name), mode="reencrypt", batch_size=20)
    report = job.run()
    assert len(seen) == 2  # batches 2 and 3 were read ahead (the last read finds none)
    assert report.remaining == 0 and report.quarantined == []
    # The changed rows were re-read inside their batch: counted as contended, never
    # overwritten with the value read ahead.
    assert report.contended == len(changed) == 2
    emails = _emails(pg_engine, people)
    for pk, value in emails.items():
        assert value == changed.get(pk, f"user{pk}@example.com")
    with pg_engine.connect() as conn:
        versions = {
            parse_envelope(bytes(v)).key_version
            for v in conn.execute(text(f"SELECT email FROM {people.name}")).scalars()
        }
    assert versions == {2}


def test_a_row_fixed_after_the_read_ahead_saw_it_broken_is_not_quarantined(
    pg_engine: Engine, service: EncryptionService, people: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_plaintext(pg_engine, people.name, 40)
    assert ColumnJob(pg_engine, service, spec(people.name), batch_size=20).run().written == 40
    service.rotate()
    with pg_engine.begin() as conn:
        good = conn.execute(text(f"SELECT email FROM {people.name} WHERE id = 30")).scalar()
        # A damaged envelope in the second batch...
        conn.execute(
            text(f"UPDATE {people.name} SET email = :v WHERE id = 30"),
            {"v": bytes(good)[:20]},
        )

    def app_repairs(pks: list[str]) -> None:
        # ...which the application repairs (restores from a backup) right after the
        # read-ahead classified it.
        if "30" in pks:
            with pg_engine.begin() as conn:
                conn.execute(
                    text(f"UPDATE {people.name} SET email = :v WHERE id = 30"), {"v": good}
                )

    seen = _after_read_ahead(monkeypatch, app_repairs)
    report = ColumnJob(pg_engine, service, spec(people.name), mode="reencrypt", batch_size=20).run()
    assert any("30" in pks for pks in seen)
    assert report.quarantined == [] and report.remaining == 0
    assert _emails(pg_engine, people)[30] == "user30@example.com"


def test_without_read_ahead_one_connection_does_all(
    pg_engine: Engine, service: EncryptionService, people: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_plaintext(pg_engine, people.name, 50)
    seen = _after_read_ahead(monkeypatch, lambda pks: None)
    job = ColumnJob(pg_engine, service, spec(people.name), batch_size=20, read_ahead=False)
    assert job.run().written == 50
    assert seen == []
    job = ColumnJob(pg_engine, service, spec(people.name), batch_size=20, read_ahead=True)
    service.rotate()
    job = ColumnJob(pg_engine, service, spec(people.name), mode="reencrypt", batch_size=20)
    assert job.run().written == 50
    assert len(seen) == 2


def test_a_read_ahead_from_a_stale_checkpoint_is_not_used(
    pg_engine: Engine, service: EncryptionService, people: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_plaintext(pg_engine, people.name, 60)
    assert ColumnJob(pg_engine, service, spec(people.name), batch_size=20).run().written == 60
    service.rotate()
    job = ColumnJob(pg_engine, service, spec(people.name), mode="reencrypt", batch_size=20)
    moved: list[bool] = []

    def checkpoint_moves(pks: list[str]) -> None:
        # Once: the range's checkpoint is set back to its start (as a takeover by another
        # worker resuming from an older checkpoint would), after the read-ahead started from
        # the newer one. Waits for the current batch's lock on the range row, then moves it.
        if moved:
            return
        moved.append(True)
        with pg_engine.begin() as conn:
            conn.execute(
                text(f"UPDATE {job.state_schema}.glc_job_ranges SET last_pk = NULL WHERE job = :j"),
                {"j": job.job_name},
            )

    _after_read_ahead(monkeypatch, checkpoint_moves)
    report = job.run()
    # The batch read for itself from the checkpoint it found: the first 20 rows again
    # (already moved: skipped), then the rest.
    assert report.remaining == 0 and report.written == 60
    assert report.scanned == 80 and report.skipped == 20


def test_a_pool_too_small_for_read_ahead_runs_the_job_without_it(
    pg_url: str, service: EncryptionService, table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two connections at most: the run's own and the one it borrows for claims and counts.
    # Read-ahead would keep a third for the run, and the next batch would wait for it.
    from sqlalchemy import create_engine

    engine = create_engine(pg_url, pool_size=2, max_overflow=0, pool_timeout=3)
    md = MetaData()
    people_table(service, table_name, md)
    md.create_all(engine)
    try:
        fill_plaintext(engine, table_name, 60)
        seen = _after_read_ahead(monkeypatch, lambda pks: None)
        report = ColumnJob(engine, service, spec(table_name), batch_size=20).run()
        assert (report.written, report.remaining, seen) == (60, 0, [])
    finally:
        md.drop_all(engine)
        engine.dispose()
