"""SQL plumbing of column jobs: reads that keep values out of logs, quoting, lease waits."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from greenlang_crypto.sqlalchemy import _job_sql
from greenlang_crypto.sqlalchemy._job_sql import _LeaseWatch, _OpenRange

SECRET = "s3cret-plaintext-value"


@pytest.fixture
def engine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Engine]:
    # The engine logger must be at DEBUG before the engine exists, or it never logs rows.
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    # Named parameters, as the jobs' PostgreSQL driver takes them (a mapping, not a sequence).
    eng = create_engine(f"sqlite:///{tmp_path / 'j.db'}", paramstyle="named")
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(text("INSERT INTO t VALUES (1, 'a'), (2, :s), (3, 'c')"), {"s": SECRET})
    yield eng
    eng.dispose()


def rng(i: int, until: str | None = "t1", processed: int = 0, left: float = 5.0) -> _OpenRange:
    return _OpenRange(i, "running", "w1", until, processed, left)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(_job_sql, "time", SimpleNamespace(monotonic=c.monotonic))
    return c


def test_value_rows_returns_the_rows(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = _job_sql._value_rows(
            conn, "SELECT id, v FROM t WHERE id >= :lo ORDER BY id", {"lo": 2}
        )
    assert rows == [(2, SECRET), (3, "c")]


def test_value_rows_log_no_values_where_sqlalchemy_results_would(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with engine.connect() as conn:
        caplog.clear()
        _job_sql._value_rows(conn, "SELECT v FROM t WHERE id = :i", {"i": 2})
        assert SECRET not in caplog.text
        conn.execute(text("SELECT v FROM t WHERE id = :i"), {"i": 2}).all()
    # The same read through SQLAlchemy's result object does log the row at DEBUG.
    assert SECRET in caplog.text


def test_value_rows_raise_driver_errors_as_dbapi_errors_without_parameters(
    engine: Engine,
) -> None:
    with engine.connect() as conn:
        with pytest.raises(DBAPIError) as info:
            _job_sql._value_rows(conn, "SELECT v FROM missing WHERE v = :s", {"s": SECRET})
    assert isinstance(info.value, OperationalError)
    assert "missing" in str(info.value)
    assert SECRET not in str(info.value)
    assert not info.value.connection_invalidated


def test_quote_quotes_each_part_only_when_needed() -> None:
    conn = SimpleNamespace(dialect=postgresql.dialect())
    assert _job_sql._quote(conn, "plain") == "plain"  # type: ignore[arg-type]
    assert _job_sql._quote(conn, "security.Login") == 'security."Login"'  # type: ignore[arg-type]
    assert _job_sql._quote(conn, "user") == '"user"'  # type: ignore[arg-type]
    assert _job_sql._quote(conn, 'a"b') == '"a""b"'  # type: ignore[arg-type]


def test_version_byte_is_the_first_byte_or_zero() -> None:
    assert _job_sql._version_byte(b"\x07abc") == 7
    assert _job_sql._version_byte(b"") == 0


def test_a_silent_holder_runs_out_of_patience(clock: Clock) -> None:
    watch = _LeaseWatch(patience=3.0)
    ranges = [rng(0, left=10.0)]
    # Never longer than the poll interval, never shorter than 50 ms.
    assert watch.pause(ranges) == _job_sql._POLL_SECONDS
    clock.now += 2.5
    assert watch.pause(ranges) == pytest.approx(0.5)
    clock.now += 0.5
    assert watch.pause(ranges) is None


def test_any_change_of_the_ranges_restarts_the_patience(clock: Clock) -> None:
    watch = _LeaseWatch(patience=3.0)
    watch.pause([rng(0, processed=10)])
    clock.now += 3.0
    assert watch.pause([rng(0, processed=20)]) is not None  # a checkpoint moved: alive
    clock.now += 2.9
    assert watch.pause([rng(0, processed=20)]) is not None
    clock.now += 0.1
    assert watch.pause([rng(0, processed=20)]) is None


def test_the_wait_ends_just_after_the_soonest_lease(clock: Clock) -> None:
    watch = _LeaseWatch(patience=30.0)
    assert watch.pause([rng(0, left=0.2), rng(1, left=9.0)]) == pytest.approx(0.25)
    assert watch.pause([rng(0, left=0.0)]) == pytest.approx(0.05)


def test_value_rows_compile_each_statement_once_per_dialect(engine: Engine) -> None:
    sql = "SELECT id FROM t WHERE id = :i"
    with engine.connect() as conn:
        assert _job_sql._value_rows(conn, sql, {"i": 1}) == [(1,)]
        compiled = _job_sql._compiled.get((conn.dialect, sql))
        assert compiled is not None
        # Other parameters, the same compiled statement.
        assert _job_sql._value_rows(conn, sql, {"i": 3}) == [(3,)]
        assert _job_sql._compiled.get((conn.dialect, sql)) is compiled
    other = create_engine(f"{engine.url}", paramstyle="named")
    try:
        with other.connect() as conn:
            assert _job_sql._value_rows(conn, sql, {"i": 2}) == [(2,)]
            assert _job_sql._compiled.get((conn.dialect, sql)) is not compiled
    finally:
        other.dispose()
