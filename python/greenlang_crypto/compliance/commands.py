"""CLI subcommand `greenlang-crypto verify` (compliance report)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def run(args: argparse.Namespace) -> int:
        from greenlang_crypto.compliance.verify import ColumnSpec, run_verification

        service = make_service(args)
        audit_verify = _audit_verifier(service)
        try:
            report = run_verification(
                service,
                db_url=args.db,
                columns=[ColumnSpec.parse(c) for c in args.column],
                terraform_dir=args.terraform,
                audit_verify=audit_verify,
            )
        except Exception as exc:
            typed = _database_error(exc)
            if typed is None:
                raise
            raise typed from exc
        sys.stdout.write((report.to_json() if args.json else report.to_text()) + "\n")
        return 1 if report.failed else 0

    p.set_defaults(func=run)


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


def _audit_verifier(service: Any) -> Callable[[], Any] | None:
    """Verifies the audit chain of this data directory (or ``$GLC_AUDIT_URL``).

    Always: an absent audit log is a failed control (evidence that is gone), never a skip.
    """
    url = os.environ.get("GLC_AUDIT_URL") or None

    def verify() -> Any:
        from greenlang_crypto.audit import AuditLog, open_audit_sink

        audit = AuditLog(open_audit_sink(url, service.config.data_dir), start_thread=False)
        try:
            audit.bind(service)
            result = audit.verify()
        finally:
            audit.close()
        return _AuditOutcome(
            ok=result.ok,
            detail=(
                f"{result.records} record(s), HMAC chain intact"
                if result.ok
                else "; ".join(f"seq {p.seq}: {p.kind} ({p.detail})" for p in result.problems[:10])
            ),
        )

    return verify


@dataclass(frozen=True)
class _AuditOutcome:
    ok: bool
    detail: str
