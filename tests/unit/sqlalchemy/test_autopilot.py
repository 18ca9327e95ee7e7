"""The autopilot step without a database: its report, its arguments, an unreachable database.

The step itself (rotation, re-encryption, retirement, the lock) runs against PostgreSQL in
``tests/integration/test_autopilot.py``.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from greenlang_crypto.exceptions import InvalidArgumentError, KeyStoreUnavailableError
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy.autopilot import (
    EXIT_BLOCKED,
    EXIT_DONE,
    EXIT_PROGRESSING,
    AutopilotReport,
    ColumnRegistry,
    run_autopilot_once,
)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("done", EXIT_DONE),
        ("held", EXIT_DONE),
        ("progressing", EXIT_PROGRESSING),
        ("blocked", EXIT_BLOCKED),
    ],
)
def test_the_exit_code_follows_the_status(status: str, code: int) -> None:
    assert AutopilotReport(status=status).exit_code == code


def test_the_codes_do_not_clash_with_the_cli_error_codes() -> None:
    from greenlang_crypto.cli.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_RETRY_LATER

    ours = {EXIT_DONE, EXIT_PROGRESSING, EXIT_BLOCKED}
    assert ours == {0, 10, 20}
    assert not ours & {1, EXIT_ERROR, EXIT_RETRY_LATER, EXIT_INTERRUPTED}


def test_the_report_as_json() -> None:
    report = AutopilotReport(
        status="blocked",
        reasons=["t.c: 1 row(s) quarantined (DecryptionError)"],
        actions=[{"action": "rotate", "old_version": 1, "new_version": 2}],
        columns={"t.c": {"remaining": 1}},
        primary_version=2,
        min_decryption_version=1,
        seconds=0.12345,
    )
    doc = json.loads(json.dumps(report.as_dict()))
    assert doc["status"] == "blocked" and doc["exit_code"] == EXIT_BLOCKED
    assert doc["actions"][0]["new_version"] == 2
    assert doc["columns"] == {"t.c": {"remaining": 1}}
    assert doc["seconds"] == 0.123
    assert doc["holder"] is None and doc["overdue"] == [] and doc["notes"] == []


def test_bad_arguments_are_refused_before_any_connection(
    engine: Engine, service: EncryptionService
) -> None:
    registry = ColumnRegistry()
    with pytest.raises(InvalidArgumentError, match="budget_seconds"):
        run_autopilot_once(engine, service, registry, budget_seconds=0)
    with pytest.raises(InvalidArgumentError, match="max_rows_per_second"):
        run_autopilot_once(engine, service, registry, max_rows_per_second=-1)
    sqlite = create_engine("sqlite://")
    with pytest.raises(InvalidArgumentError, match="PostgreSQL"):
        run_autopilot_once(sqlite, service, registry)
    sqlite.dispose()


def test_an_unreachable_database_is_a_typed_outage(
    engine: Engine, service: EncryptionService
) -> None:
    # The fixture's engine points at a port nothing listens on.
    with pytest.raises(KeyStoreUnavailableError, match="cannot reach the database"):
        run_autopilot_once(engine, service, ColumnRegistry(), budget_seconds=1)
    assert service.primary_version == 1  # nothing was done
