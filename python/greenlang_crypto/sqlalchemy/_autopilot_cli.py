"""``greenlang-crypto db autopilot --once``: one rotation-autopilot step, for a scheduler.

Registered by the ``db`` command group; SQLAlchemy and the models are imported only when the
command runs. The step is :func:`greenlang_crypto.sqlalchemy.autopilot.run_autopilot_once`
over every encrypted column of ``--model package.module:Base`` (a declarative base, an ORM
registry or a MetaData), audited in the service's audit log under the CLI's actor.

Exit codes: 0 done (nothing due now, or another runner holds the lock), 10 progressing (work
remains: run it again), 20 blocked (the reasons say why), 3 unavailable (the database, the
key store or the audit sink is down), 2 a usage or typed error.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from greenlang_crypto.exceptions import ConfigurationError, InvalidArgumentError

__all__ = ["add_autopilot_command", "load_models"]

_EPILOG = (
    "exit codes: 0 done (nothing due now, or another runner holds the lock), "
    "10 progressing (work remains: run it again), 20 blocked (the reasons say why), "
    "3 unavailable (database, key store or audit sink down), 2 usage or typed error"
)


def add_autopilot_command(
    subparsers: Any, make_service: Callable[[argparse.Namespace], Any]
) -> None:
    """Adds ``autopilot`` to the ``db`` command group's subparsers."""
    p = subparsers.add_parser(
        "autopilot",
        help="run one step of the rotation policy: rotate, re-encrypt every encrypted "
        "column of the models, retire, whatever is due (safe to run every minute)",
        epilog=_EPILOG,
    )
    p.add_argument("--url", help="SQLAlchemy URL (default $GLC_DATABASE_URL or $GLC_PG_URL)")
    p.add_argument(
        "--once",
        action="store_true",
        required=True,
        help="run one step and exit (the only mode so far; run it from a scheduler)",
    )
    p.add_argument(
        "--model",
        required=True,
        help="the models, package.module:Base (a declarative base, an ORM registry or a "
        "MetaData): every column of the library's encrypted types is registered",
    )
    p.add_argument(
        "--version-column",
        action="append",
        default=[],
        metavar="TABLE.COLUMN=VERSION_COLUMN",
        help="an integer column mirroring a column's key version (repeatable)",
    )
    p.add_argument(
        "--budget-seconds",
        type=float,
        default=50.0,
        help="time for re-encryption in this step (default %(default)s; checked per batch)",
    )
    p.add_argument(
        "--max-rows-per-second",
        type=float,
        default=None,
        help="cap on the rows re-encryption reads per second (yield to application traffic)",
    )
    p.add_argument(
        "--keep-stored-deks",
        action="store_true",
        help="on retirement, keep the retired versions' stored DEKs (the retirement is then "
        "refused while any exist)",
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--state-schema", default="encryption")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=lambda a: _cmd_autopilot(a, make_service))


def load_models(path: str) -> Any:
    """The object ``package.module:Name`` names (``--model``), imported from the cwd too.

    Raises:
        InvalidArgumentError: The path is malformed, the module does not import, or the
            attribute does not exist.
    """
    from greenlang_crypto.sqlalchemy._common import import_path

    return import_path(path, "package.module:Base (for example app.models:Base)")


def _version_columns(given: list[str]) -> dict[str, str]:
    out = {}
    for item in given:
        name, sep, column = item.partition("=")
        if not sep or "." not in name or not column:
            raise InvalidArgumentError(
                f"--version-column {item!r}: expected TABLE.COLUMN=VERSION_COLUMN"
            )
        out[name] = column
    return out


def _url(args: argparse.Namespace) -> str:
    url = args.url or os.environ.get("GLC_DATABASE_URL") or os.environ.get("GLC_PG_URL")
    if not url:
        raise ConfigurationError("no database URL: pass --url or set GLC_DATABASE_URL")
    return str(url)


def _print(report: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    print(
        f"autopilot: {report.status} (primary v{report.primary_version}, "
        f"minimum v{report.min_decryption_version})"
        if report.primary_version is not None
        else f"autopilot: {report.status}"
    )
    for action in report.actions:
        print("  did: " + ", ".join(f"{k}={v}" for k, v in action.items()))
    for reason in report.reasons:
        print(f"  {reason}")
    for late in report.overdue:
        print(f"  overdue: {late}")
    for note in report.notes:
        print(f"  note: {note}")


def _cmd_autopilot(args: argparse.Namespace, make_service: Callable[..., Any]) -> int:
    from sqlalchemy import create_engine

    from greenlang_crypto.audit import acting_as
    from greenlang_crypto.composition import open_audit_log
    from greenlang_crypto.sqlalchemy.autopilot import ColumnRegistry, run_autopilot_once

    if args.max_rows_per_second is not None and not args.max_rows_per_second > 0:
        raise InvalidArgumentError("--max-rows-per-second must be positive")
    registry = ColumnRegistry.from_metadata(
        load_models(args.model), version_columns=_version_columns(args.version_column)
    )
    url = _url(args)
    service = make_service(args)
    # hide_parameters: a failing statement's exception must not carry bound values (row
    # values); pool_pre_ping: after a database restart the pooled connections are dead.
    engine = create_engine(url, hide_parameters=True, pool_pre_ping=True)
    actor = f"cli:{os.environ.get('USER') or os.getuid()}"
    try:
        audit = open_audit_log(service.config, actor=actor, start_thread=False)
        audit.attach(service)
        try:
            with acting_as(actor):
                report = run_autopilot_once(
                    engine,
                    service,
                    registry,
                    budget_seconds=args.budget_seconds,
                    max_rows_per_second=args.max_rows_per_second,
                    audit=audit,
                    delete_stored_deks=not args.keep_stored_deks,
                    batch_size=args.batch_size,
                    state_schema=args.state_schema,
                )
        finally:
            audit.close()
        _print(report, args.json)
        return int(report.exit_code)
    finally:
        engine.dispose()
        service.close()
