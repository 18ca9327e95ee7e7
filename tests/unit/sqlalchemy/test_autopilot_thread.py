"""The autopilot's background thread: arguments, failed steps survived and logged, stop."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.sqlalchemy._registry import ColumnRegistry
from greenlang_crypto.sqlalchemy.autopilot import AutopilotReport
from greenlang_crypto.sqlalchemy.autopilot_thread import AutopilotThread


def test_bad_intervals_and_budgets_are_refused(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    registry = ColumnRegistry()
    with pytest.raises(InvalidArgumentError, match="interval_seconds"):
        AutopilotThread(engine, None, registry, interval_seconds=0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="budget_seconds"):
        AutopilotThread(engine, None, registry, budget_seconds=-1)  # type: ignore[arg-type]


def test_a_failing_step_is_logged_and_the_next_one_still_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Not PostgreSQL: every step raises a typed error. The thread must outlive it.
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    seen: list[AutopilotReport | None] = []

    def observer(report: AutopilotReport | None) -> None:
        seen.append(report)
        raise RuntimeError("an observer's own bug")

    pilot = AutopilotThread(
        engine,
        None,  # type: ignore[arg-type]
        ColumnRegistry(),
        interval_seconds=0.05,
        on_step=observer,
    )
    with caplog.at_level(logging.INFO, logger="greenlang_crypto.autopilot"):
        pilot.start()
        deadline = time.monotonic() + 10
        while pilot.failures < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert pilot.running
        with pytest.raises(InvalidArgumentError, match="started already"):
            pilot.start()
        began = time.monotonic()
        pilot.stop(timeout=5)
    assert not pilot.running and time.monotonic() - began < 2
    assert pilot.steps >= 3 and pilot.last_report is None
    assert seen[:3] == [None, None, None]
    failed = [r.getMessage() for r in caplog.records if "step failed" in r.getMessage()]
    assert failed and "InvalidArgumentError the autopilot runs on PostgreSQL" in failed[0]
    assert any("on_step callback failed: RuntimeError" in r.getMessage() for r in caplog.records)
