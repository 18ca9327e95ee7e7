"""CLI subcommand `greenlang-crypto verify` (compliance report).

Exit codes: 0 when every control passed (or was skipped with ``--allow-skip``), 1 when one
failed or was skipped without permission, 2 and 3 as every command (an error to fix, an
outage).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenlang_crypto.composition import audit_url_from_env, open_audit_log
from greenlang_crypto.exceptions import (
    ConfigurationError,
    GreenlangCryptoError,
    UnavailableError,
)


def register(
    subparsers: Any,
    make_service: Callable[[argparse.Namespace], Any],
    make_config: Callable[[argparse.Namespace], Any],
) -> None:
    """Adds ``verify`` to the ``greenlang-crypto`` parser."""
    p = subparsers.add_parser("verify", help="compliance report (SOC 2, ISO 27001, GDPR)")
    p.add_argument("--db", help="database URL holding the encrypted columns")
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="[SCHEMA.]TABLE.COLUMN[:PK]",
        help="a column declared encrypted (repeatable)",
    )
    p.add_argument("--terraform", type=Path, default=None, help="the KMS Terraform module dir")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--allow-skip",
        action="append",
        default=[],
        metavar="CONTROL",
        help="a control that may be skipped (repeatable); any other skipped control fails the run",
    )
    p.add_argument(
        "--anchor-grace",
        type=_seconds,
        default=_ANCHOR_GRACE,
        metavar="SECONDS",
        help="how long an audit record may wait for a checkpoint in the configured anchors "
        f"before the audit control fails (default {_ANCHOR_GRACE:g})",
    )

    def run(args: argparse.Namespace) -> int:
        from greenlang_crypto.compliance.verify import FRAMEWORKS, ColumnSpec, run_verification

        unknown = sorted(set(args.allow_skip) - set(FRAMEWORKS))
        if unknown:
            raise ConfigurationError(
                f"--allow-skip: unknown control(s) {', '.join(unknown)}; known: "
                + ", ".join(sorted(FRAMEWORKS))
            )
        service = make_service(args)
        audit_verify = _audit_verifier(service, args.anchor_grace)
        try:
            report = run_verification(
                service,
                db_url=args.db,
                columns=[ColumnSpec.parse(c) for c in args.column],
                terraform_dir=args.terraform,
                audit_verify=audit_verify,
                allow_skip=args.allow_skip,
            )
        except Exception as exc:
            typed = _database_error(exc)
            if typed is None:
                raise
            raise typed from exc
        sys.stdout.write((report.to_json() if args.json else report.to_text()) + "\n")
        return 0 if report.ok else 1

    p.set_defaults(func=run)


#: Default patience for a record without a checkpoint: the API publishes one every minute
#: (and at shutdown), the CLI and the jobs when they close.
_ANCHOR_GRACE = 300.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("expected a number of seconds >= 0")
    return value


def _database_error(exc: Exception) -> GreenlangCryptoError | None:
    """The typed error for a failure of the ``--db`` database, else None.

    Only the error class is named: a driver's message can quote the URL or the statement.
    SQLAlchemy is looked up only when loaded (the check imports it only with ``--db``).
    """
    sa = sys.modules.get("sqlalchemy.exc")
    if sa is None:
        return None
    name = type(exc).__name__
    if isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.TimeoutError):
        # Unreachable, restarting, out of connections: the same report may work later.
        return UnavailableError(f"the --db database is unreachable ({name}); retry later")
    if isinstance(exc, sa.ArgumentError | sa.NoSuchModuleError):
        return ConfigurationError(f"--db is not a usable database URL ({name})")
    if isinstance(exc, sa.DBAPIError):
        # A missing table or column, a denied SELECT: the declared columns are wrong.
        return GreenlangCryptoError(f"the --db database refused the column check ({name})")
    return None


def _audit_verifier(service: Any, grace_seconds: float = _ANCHOR_GRACE) -> Callable[[], Any]:
    """Verifies the audit chain of this data directory (or ``$GLC_AUDIT_URL``).

    Always: an absent audit log is a failed control (evidence that is gone), never a skip.
    The log is checked against the anchors every writer publishes to (the file beside a
    file log and ``$GLC_AUDIT_ANCHORS``), and with anchors configured the control also fails
    when records older than ``grace_seconds`` have no checkpoint: the anchors would not
    notice those records being cut.
    """
    url = audit_url_from_env()

    def verify() -> Any:
        from greenlang_crypto.audit.verifier import unanchored_records

        audit = open_audit_log(service.config, url=url, start_thread=False)
        try:
            audit.bind(service)
            result = audit.verify()
            problems = list(result.problems)
            note = ""
            if not problems and audit.anchors:
                readable = [f for a in audit.anchors if (f := a.checkpoints()) is not None]
                if not readable:
                    note = "; its anchors cannot be read back, so coverage is not checked"
                else:
                    tail = audit.tail(1)
                    gap = unanchored_records(
                        tail[-1] if tail else None,
                        [cp for found in readable for cp in found],
                        grace_seconds=grace_seconds,
                        now=time.time(),
                    )
                    if gap is not None:
                        problems.append(gap)
        finally:
            # Only the sink: this check reads, and closing the log would publish a
            # checkpoint of whatever head the database holds now, vouching for it.
            audit.sink.close()
        if problems:
            detail = "; ".join(f"seq {p.seq}: {p.kind} ({p.detail})" for p in problems[:10])
        else:
            detail = f"{result.records} record(s), HMAC chain intact{note}"
        return _AuditOutcome(ok=not problems, detail=detail)

    return verify


@dataclass(frozen=True)
class _AuditOutcome:
    ok: bool
    detail: str
