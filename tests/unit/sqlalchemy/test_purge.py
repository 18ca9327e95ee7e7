"""``purge_erased`` in process: argument checks, targets and the report.

Bad arguments are refused before any connection (the engine here cannot connect). Purges of
real rows, crashes and resumption are in ``tests/integration/sqlalchemy/test_purge.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine
from sqlalchemy.engine import Engine

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EMAIL, BlindIndex, EncryptedString, FromRow
from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec
from greenlang_crypto.sqlalchemy._purge import (
    PURGE_ACTIONS,
    PurgeReport,
    PurgeTarget,
    purge_erased,
)


@pytest.fixture
def sqlite() -> Iterator[Engine]:
    eng = create_engine("sqlite://")
    yield eng
    eng.dispose()


def test_bad_arguments_are_refused_before_any_connection(
    engine: Engine, sqlite: Engine, service: EncryptionService
) -> None:
    target = PurgeTarget("docs", "email")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"action": "shred"}, "action must be one of"),
        ({"batch_size": 0}, "batch_size must be in 1..10000"),
        ({"batch_size": 10_001}, "batch_size must be in 1..10000"),
        ({"state_schema": "Bad-Schema"}, "state_schema must be a lowercase SQL identifier"),
        ({"max_retries": -1}, "max_retries must not be negative"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidArgumentError, match=message):
            purge_erased(engine, target, service, **kwargs)
    with pytest.raises(InvalidArgumentError, match="runs on PostgreSQL"):
        purge_erased(sqlite, target, service)
    with pytest.raises(InvalidArgumentError, match="with is_erased"):
        purge_erased(engine, target, object())  # type: ignore[arg-type]
    assert PURGE_ACTIONS == ("null", "delete")


def test_targets_come_from_models_specs_or_themselves(service: EncryptionService) -> None:
    t = Table(
        "docs",
        MetaData(),
        Column("uid", Integer, primary_key=True),
        Column("tenant", String(20)),
        Column("email", EncryptedString(service, data_class="pii", tenant_id=FromRow("tenant"))),
        Column("email_idx", BlindIndex("email", normalizer=EMAIL)),
        schema="app",
    )
    target = PurgeTarget.of(t.c.email, version_column="email_kv")
    assert target == PurgeTarget("app.docs", "email", "uid", "email_idx", "email_kv")
    spec = ColumnSpec("docs", "email", tenant_id="acme", version_column="kv")
    assert PurgeTarget.of(spec) == PurgeTarget("docs", "email", "id", None, "kv")
    assert PurgeTarget.of(target) is target
    with pytest.raises(InvalidArgumentError, match="not an encrypted column"):
        PurgeTarget.of(t.c.tenant)


def test_the_report_is_json_friendly_and_holds_no_values() -> None:
    report = PurgeReport("docs", "email", "null", dry_run=False, run="r1", scanned=9)
    report.erased, report.purged, report.resumed_after, report.seconds = 3, 3, "41", 0.12345
    assert report.as_dict() == {
        "table": "docs",
        "column": "email",
        "action": "null",
        "dry_run": False,
        "run": "r1",
        "scanned": 9,
        "erased": 3,
        "purged": 3,
        "not_envelope": 0,
        "unreadable_header": 0,
        "resumed_after": "41",
        "finished": False,
        "seconds": 0.123,
    }
