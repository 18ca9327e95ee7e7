"""The job-table base of column jobs without a database: retries, and the error of a stuck run.

What reads and writes the job table itself runs against PostgreSQL, in
tests/integration/sqlalchemy/test_job_ranges.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy.exc import DatabaseError, IntegrityError, InterfaceError, OperationalError

from greenlang_crypto.exceptions import JobIncompleteError, KeyStoreUnavailableError
from greenlang_crypto.metrics import reencryption_progress
from greenlang_crypto.sqlalchemy import _job_ranges
from greenlang_crypto.sqlalchemy._job_spec import JobReport
from greenlang_crypto.sqlalchemy._job_sql import _OpenRange


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(_job_ranges, "time", SimpleNamespace(sleep=slept.append))
    return slept


def tables(max_retries: int = 3, retry_delay: float = 1.0) -> _job_ranges._JobTables:
    job = _job_ranges._JobTables()
    job.job_name = "encrypt:people.email:p1@run"
    job.max_retries = max_retries
    job.retry_delay = retry_delay
    job.wait_leases = 12.0
    return job


class Flaky:
    """Fails with the given errors in turn, then returns ``"done"``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, value: str) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return value


def lost(cls: type[DatabaseError] = OperationalError, invalidated: bool = False) -> DatabaseError:
    return cls("SELECT 1", {}, ConnectionError("server closed"), connection_invalidated=invalidated)


def test_a_lost_connection_is_retried_with_doubling_backoff(sleeps: list[float]) -> None:
    job = tables(max_retries=5, retry_delay=1.0)
    report = JobReport(job.job_name)
    op = Flaky(lost(), lost(InterfaceError), lost(), lost(), lost())
    assert job._retrying(report, op, "done") == "done"
    assert op.calls == 6
    assert report.retries == 5
    # 1, 2, 4, then capped at five seconds.
    assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_an_invalidated_connection_is_retried_whatever_the_error(sleeps: list[float]) -> None:
    job = tables()
    op = Flaky(lost(DatabaseError, invalidated=True))
    assert job._retrying(None, op, "ok") == "ok"
    assert op.calls == 2


def test_other_database_errors_are_not_retried(sleeps: list[float]) -> None:
    job = tables()
    op = Flaky(lost(IntegrityError))
    with pytest.raises(IntegrityError):
        job._retrying(None, op, "x")
    assert op.calls == 1
    assert sleeps == []


def test_giving_up_names_the_error_type_only(sleeps: list[float]) -> None:
    job = tables(max_retries=2)
    report = JobReport(job.job_name)
    op = Flaky(*(lost() for _ in range(5)))
    with pytest.raises(KeyStoreUnavailableError) as info:
        job._retrying(report, op, "x")
    message = str(info.value)
    assert "failed 3 times in a row (ConnectionError)" in message
    assert job.job_name in message
    assert "SELECT 1" not in message
    assert isinstance(info.value.__cause__, OperationalError)
    assert op.calls == 3
    assert report.retries == 2


def test_a_stuck_run_says_who_holds_what_and_when_to_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = tables()
    monkeypatch.setattr(job, "count_remaining", lambda: 42)
    monkeypatch.setattr(job, "_retrying", lambda report, op, *args: op(*args))
    report = JobReport(job.job_name)
    ranges = [
        _OpenRange(0, "running", "host-b:7", "2026-01-01", 10, 3.2),
        _OpenRange(1, "running", "host-a:9", "2026-01-01", 0, 0.4),
        _OpenRange(2, "pending", None, None, 0, 0.0),
    ]
    error = job._incomplete(ranges, report)
    assert isinstance(error, JobIncompleteError)
    assert error.retry_after == 4.0
    assert report.remaining == 42
    assert reencryption_progress().snapshot()[1] == 42
    message = str(error)
    assert "3 range(s)" in message
    assert "host-a:9, host-b:7, nobody" in message
    assert "no progress for 12 s" in message
    assert "42 row(s) remain" in message
    assert "rerun after 4 s" in message


def test_a_stuck_run_waits_at_least_a_second() -> None:
    job = tables()
    job.count_remaining = lambda: 0  # type: ignore[method-assign]
    ranges = [_OpenRange(0, "running", "w", "t", 0, 0.0)]
    assert job._incomplete(ranges, JobReport(job.job_name)).retry_after == 1.0


def test_on_the_callers_connection_a_lost_connection_is_not_retried(sleeps: list[float]) -> None:
    # The caller's transaction (a migration's) died with the connection: a retry on a new
    # one would run outside it, so the job gives up at once and the caller reruns.
    job = tables(max_retries=5)
    job._connection = object()  # type: ignore[assignment]
    op = Flaky(lost())
    with pytest.raises(KeyStoreUnavailableError, match="rerun the migration"):
        job._retrying(JobReport(job.job_name), op, "x")
    assert op.calls == 1
    assert sleeps == []
    other = Flaky(lost(IntegrityError))
    with pytest.raises(IntegrityError):
        job._retrying(None, other, "x")
