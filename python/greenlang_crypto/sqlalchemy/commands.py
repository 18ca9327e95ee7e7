"""``greenlang-crypto db ...``: schema migrations and column jobs (PostgreSQL).

Commands: ``db migrate [--down] [--example-columns]``, ``db status``, ``db encrypt-column``,
``db reencrypt``, ``db purge-erased``.
The database URL comes from ``--url``, else ``GLC_DATABASE_URL``, else ``GLC_PG_URL``.
SQLAlchemy is imported only when a ``db`` command runs.

A column job takes its settings from the model with ``--model package.module:Class.attr``
(imported from the current directory or ``PYTHONPATH``), the safe path: the job then encrypts
and indexes exactly as the column type reads, a flag that contradicts the model is refused
(exit 2, naming the setting), and a sample value is round-tripped through the model's type
before any row is written. Flags alone (``--table``, ``--tenant-column``, ``--bind-row``,
...) still work, unchecked, with a warning on stderr.

``db purge-erased`` NULLs (``--action null``, the default) or deletes (``--action delete``)
the rows whose envelopes' keys were erased, judged from the envelope headers without
decrypting; it resumes after a crash from its checkpoint in ``glc_purge_runs``, and
``--dry-run`` only counts. It prints scanned / erased / purged (``--json``: the whole report).

A job command exits 0 only when every range of its run is done and a direct count finds no
row left to process; 1 when rows remain or were quarantined; and with the library's typed
errors when the database stays unreachable (``KeyStoreUnavailableError``) or other workers
still hold ranges (``JobIncompleteError``, after printing this worker's summary).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from greenlang_crypto.exceptions import ConfigurationError, JobIncompleteError

__all__ = ["column_spec", "load_model_column", "register"]

_NORMALIZERS = ("none", "email", "phone", "casefold", "nfc", "strip")
_DEFAULT_LEASE_SECONDS = 60.0


def register(
    subparsers: Any,
    make_service: Callable[[argparse.Namespace], Any],
    make_config: Callable[[argparse.Namespace], Any],
) -> None:
    """Adds the ``db`` command group to the ``greenlang-crypto`` parser."""
    db = subparsers.add_parser("db", help="database migrations and column encryption jobs")
    ds = db.add_subparsers(dest="db_command", required=True)

    def with_url(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="SQLAlchemy URL (default $GLC_DATABASE_URL or $GLC_PG_URL)")

    mig = ds.add_parser(
        "migrate",
        help="apply (or --down: revert) the packaged SQL migrations of the library's own "
        "schema `encryption`",
    )
    with_url(mig)
    mig.add_argument("--down", action="store_true", help="revert the applied migrations")
    mig.add_argument(
        "--example-columns",
        action="store_true",
        help="also add the example encrypted columns to the application tables users, "
        "api_keys and security.login_attempts where they exist (sql/example_columns.sql); "
        "with --down, drop only those columns and leave the library's schema",
    )
    mig.set_defaults(func=_cmd_migrate)

    st = ds.add_parser("status", help="applied migrations, job ranges and quarantined rows")
    with_url(st)
    st.add_argument("--state-schema", default="encryption")
    st.set_defaults(func=_cmd_status)

    for name, mode, text in (
        ("encrypt-column", "encrypt", "encrypt a plaintext column in place (phase 1 or 2)"),
        ("reencrypt", "reencrypt", "move a column to the primary key and index versions"),
    ):
        p = ds.add_parser(name, help=text)
        with_url(p)
        _column_arguments(p)
        tenant = p.add_mutually_exclusive_group()
        tenant.add_argument("--tenant", help="fixed tenant_id of the column's context")
        tenant.add_argument("--tenant-column", help="column holding each row's tenant_id")
        p.add_argument(
            "--bind-row",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="values are bound to the pk (default: the model's, else no)",
        )
        p.add_argument("--data-class", help="data_class of the context (default: pii)")
        p.add_argument("--kind", choices=["str", "bytes"], default=None)
        p.add_argument("--index-purpose")
        p.add_argument("--index-normalizer", choices=_NORMALIZERS, default=None)
        p.add_argument("--index-length", type=int, default=None)
        p.add_argument("--index-per-tenant", action=argparse.BooleanOptionalAction, default=None)
        p.add_argument("--batch-size", type=int, default=500)
        p.add_argument("--dry-run", action="store_true", help="count rows per state only")
        p.add_argument("--worker", help="worker name (a restarted worker resumes its ranges)")
        p.add_argument("--workers", type=int, default=1, help="start N worker processes")
        p.add_argument("--ranges", type=int, default=None, help="pk ranges (default: workers)")
        p.add_argument("--restart", action="store_true", help="forget checkpoints, start over")
        p.add_argument(
            "--lease-seconds",
            type=float,
            default=None,
            help="how long a range stays with a silent worker before another may take it "
            f"over (default $GLC_JOB_LEASE_SECONDS, else {_DEFAULT_LEASE_SECONDS:g})",
        )
        p.add_argument(
            "--wait-leases",
            type=float,
            default=None,
            help="seconds to wait for ranges that other workers hold without progress (a "
            "dead worker's lease expiring) before exiting with JobIncompleteError "
            "(default: the lease plus a margin)",
        )
        p.add_argument("--state-schema", default="encryption")
        p.add_argument("--no-progress", action="store_true")
        if mode == "encrypt":
            p.add_argument("--phase", type=int, choices=[1, 2], default=1)
        else:
            p.add_argument("--retire", action="store_true", help="retire older versions at 0")
            p.add_argument(
                "--delete-stored-deks",
                action="store_true",
                help="with --retire, also delete the older versions' stored DEKs: only when "
                "every column and store encrypted under them is re-encrypted (this job counts "
                "its own column only), since values under a deleted DEK cannot be decrypted",
            )
        p.set_defaults(
            func=lambda a, mode=mode: _cmd_job(a, mode, make_service),
            job_mode=mode,
        )

    pg = ds.add_parser(
        "purge-erased",
        help="NULL (or delete) the rows of a column whose keys were erased (crypto-shredded)",
    )
    with_url(pg)
    _column_arguments(pg)
    pg.add_argument(
        "--action",
        choices=["null", "delete"],
        default="null",
        help="null: the column, its index and version columns become NULL (default); "
        "delete: the rows are deleted",
    )
    pg.add_argument("--batch-size", type=int, default=500)
    pg.add_argument("--dry-run", action="store_true", help="count only; change nothing")
    pg.add_argument("--restart", action="store_true", help="forget the checkpoint, start over")
    pg.add_argument("--json", action="store_true", help="print the report as JSON")
    pg.add_argument("--state-schema", default="encryption")
    pg.set_defaults(func=lambda a: _cmd_purge(a, make_service))

    # The rotation autopilot's step (``db autopilot --once``) lives in a module of its own.
    from greenlang_crypto.sqlalchemy._autopilot_cli import add_autopilot_command

    add_autopilot_command(ds, make_service)


def _column_arguments(p: argparse.ArgumentParser) -> None:
    """Where the column is: from ``--model``, or spelled out with flags."""
    p.add_argument(
        "--model",
        help="the model attribute, package.module:Class.attribute (imported from the "
        "current directory or PYTHONPATH): the job takes every setting from it and checks "
        "a sample before writing (recommended)",
    )
    p.add_argument("--table")
    p.add_argument("--column")
    p.add_argument("--pk", help="primary-key column (default: id)")
    p.add_argument("--version-column", help="integer column mirroring the key version")
    p.add_argument("--index-column", help="blind-index column")


def _url(args: argparse.Namespace) -> str:
    url = args.url or os.environ.get("GLC_DATABASE_URL") or os.environ.get("GLC_PG_URL")
    if not url:
        raise ConfigurationError("no database URL: pass --url or set GLC_DATABASE_URL")
    return str(url)


def _engine(args: argparse.Namespace) -> Any:
    from sqlalchemy import create_engine

    # hide_parameters: a failing statement's exception (printed on stderr) must not carry
    # bound values; in a column job those are plaintexts and ciphertexts. pool_pre_ping: after
    # a database restart the pooled connections are dead; a job's next batch gets a new one
    # instead of spending a retry on a connection that cannot work.
    return create_engine(_url(args), hide_parameters=True, pool_pre_ping=True)


def _lease_seconds(args: argparse.Namespace) -> float:
    if args.lease_seconds is not None:
        value = float(args.lease_seconds)
    else:
        raw = os.environ.get("GLC_JOB_LEASE_SECONDS")
        try:
            value = float(raw) if raw else _DEFAULT_LEASE_SECONDS
        except ValueError:
            raise ConfigurationError("GLC_JOB_LEASE_SECONDS must be a number of seconds") from None
    if not value > 0:
        raise ConfigurationError("the lease must be a positive number of seconds")
    return value


def _cli_actor() -> str:
    return f"cli:{os.environ.get('USER') or os.getuid()}"


def _open_audit(service: Any) -> Any:
    """The audit log of the service's data directory (or ``$GLC_AUDIT_URL``)."""
    from greenlang_crypto.composition import open_audit_log

    audit = open_audit_log(service.config, actor=_cli_actor(), start_thread=False)
    audit.attach(service)
    return audit


class _RowsLeftError(Exception):
    """Rows remain or were quarantined: the job's audit outcome is a failure (exit 1)."""


def _cmd_migrate(args: argparse.Namespace) -> int:
    from greenlang_crypto.sqlalchemy.schema import (
        apply_example_columns,
        apply_migrations,
        revert_example_columns,
        revert_migrations,
    )

    engine = _engine(args)
    try:
        if args.down and args.example_columns:
            # Only the example: the key store holds keys that data elsewhere still needs.
            revert_example_columns(engine)
            print("reverted: example columns")
        elif args.down:
            done = revert_migrations(engine)
            print("reverted: " + (", ".join(done) or "nothing"))
        else:
            done = apply_migrations(engine)
            print("applied: " + (", ".join(done) or "nothing (up to date)"))
            if args.example_columns:
                apply_example_columns(engine)
                print("applied: example columns")
    finally:
        engine.dispose()
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from greenlang_crypto.sqlalchemy.schema import status

    engine = _engine(args)
    try:
        print(json.dumps(status(engine, state_schema=args.state_schema), indent=2, default=str))
    finally:
        engine.dispose()
    return 0


def _normalizer(name: str) -> tuple[Any, ...]:
    from greenlang_crypto.sqlalchemy import blind_index as bi

    return {
        "none": (),
        "email": bi.EMAIL,
        "phone": bi.PHONE,
        "casefold": (bi.casefold,),
        "nfc": (bi.nfc,),
        "strip": (bi.strip,),
    }[name]


def load_model_column(path: str) -> Any:
    """The model attribute ``package.module:Class.attribute`` names (``--model``).

    The module is imported from the current directory or ``PYTHONPATH``.

    Raises:
        InvalidArgumentError: The path is malformed, the module does not import, or the
            attribute does not exist.
    """
    from greenlang_crypto.sqlalchemy._common import import_path

    return import_path(path, "package.module:Class.attribute (for example app.models:User.email)")


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The spec settings given as flags (``None``: not given)."""
    normalizer = getattr(args, "index_normalizer", None)
    return {
        "table": args.table,
        "column": args.column,
        "pk": args.pk,
        "data_class": getattr(args, "data_class", None),
        "tenant_id": getattr(args, "tenant", None),
        "tenant_column": getattr(args, "tenant_column", None),
        "bind_row": getattr(args, "bind_row", None),
        "kind": getattr(args, "kind", None),
        "index_column": args.index_column,
        "index_purpose": getattr(args, "index_purpose", None),
        "index_normalizer": None if normalizer is None else _normalizer(normalizer),
        "index_length": getattr(args, "index_length", None),
        "index_per_tenant": getattr(args, "index_per_tenant", None),
    }


def column_spec(args: argparse.Namespace, *, need_tenant: bool = True) -> Any:
    """The job's :class:`ColumnSpec`: from ``--model`` (flags must agree), else from flags.

    Raises:
        JobSpecMismatchError: A flag contradicts the model (the message names the setting).
        InvalidArgumentError: ``--model`` is unusable, or without it a required flag is
            missing.
    """
    from greenlang_crypto.exceptions import InvalidArgumentError
    from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec, JobSpecMismatchError

    given = _given(args)
    if args.model:
        column = load_model_column(args.model)
        try:
            spec = ColumnSpec.from_model(column, version_column=args.version_column)
        except JobSpecMismatchError:
            raise
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"--model {args.model!r}: {exc}") from None
        differing = spec.differences(given)
        if differing:
            raise JobSpecMismatchError(
                f"flags contradict the model {args.model}: "
                + "; ".join(differing)
                + " (leave them out: --model gives them)"
            )
        return spec
    missing = [f"--{n}" for n in ("table", "column") if given[n] is None]
    if need_tenant and given["tenant_id"] is None and given["tenant_column"] is None:
        missing.append("--tenant or --tenant-column")
    if missing:
        raise InvalidArgumentError(
            "give --model package.module:Class.attribute, or " + ", ".join(missing)
        )
    if not need_tenant:
        return None
    print(
        "warning: the job's settings come from flags alone and cannot be checked against the "
        "model the application reads with; a flag that differs from the model (for example "
        "--bind-row with a FromRow tenant) writes values every read refuses. Pass --model "
        "package.module:Class.attribute to take them from the model.",
        file=sys.stderr,
    )
    defaults: dict[str, Any] = {
        "pk": "id",
        "data_class": "pii",
        "bind_row": False,
        "kind": "str",
        "index_normalizer": (),
        "index_length": 16,
        "index_per_tenant": False,
    }
    settings: dict[str, Any] = {k: (defaults.get(k) if v is None else v) for k, v in given.items()}
    return ColumnSpec(**settings, version_column=args.version_column)


def _cmd_job(args: argparse.Namespace, mode: str, make_service: Callable[..., Any]) -> int:
    spec = column_spec(args)
    if args.workers > 1 and not args.dry_run:
        return _spawn_workers(args)
    from greenlang_crypto.audit import acting_as
    from greenlang_crypto.sqlalchemy._job_check import check_job
    from greenlang_crypto.sqlalchemy.migrate import (
        ColumnJob,
        enforce_ciphertext,
        retire_if_clear,
    )

    service = make_service(args)
    engine = _engine(args)
    bar: Any = None
    try:
        progress = None
        if not args.no_progress and not args.dry_run:
            bar = _bar(f"{mode} {spec.table}.{spec.column}")
            if bar is not None:

                def progress(processed: int, remaining: int) -> None:
                    bar.total = processed + remaining
                    bar.n = processed
                    bar.refresh()

        job = ColumnJob(
            engine,
            service,
            spec,
            mode=mode,
            forbid_plaintext=getattr(args, "phase", 1) == 2,
            batch_size=args.batch_size,
            worker=args.worker,
            ranges=args.ranges or args.workers,
            lease_seconds=_lease_seconds(args),
            wait_leases=args.wait_leases,
            state_schema=args.state_schema,
            progress=progress,
        )
        # With --model: the spec agrees with the model on a sample, before anything is
        # audited or written (exit 2 naming the setting otherwise).
        check_job(job)
        if args.dry_run:
            print(json.dumps(job.dry_run().as_dict(), indent=2))
            return 0
        if args.restart:
            job.reset()
        phase = getattr(args, "phase", 1)
        retire = mode == "reencrypt" and getattr(args, "retire", False)
        audit = _open_audit(service)
        summary: dict[str, Any] = {}
        try:
            # One audited path: the intent is stored before any row changes (fail closed with
            # the sink down), the summary is the outcome record.
            with (
                acting_as(_cli_actor()),
                audit.audited(
                    f"db_{mode}",
                    details={
                        # The spec's: with --model, --table and --column are not given.
                        "table": spec.table,
                        "column": spec.column,
                        "phase": phase if mode == "encrypt" else None,
                        "retire": retire,
                        "delete_stored_deks": bool(getattr(args, "delete_stored_deks", False)),
                    },
                ) as outcome,
            ):
                try:
                    report = job.run()
                except JobIncompleteError:
                    # This worker's share and the counted remaining rows, on stdout as after
                    # any run; the error itself (exit code, when to retry) goes to the caller.
                    if job.last_report is not None:
                        summary = job.last_report.summary()
                        outcome.update({k: v for k, v in summary.items() if k != "job"})
                        outcome["job"] = job.last_report.job
                        if bar is not None:
                            bar.close()
                            bar = None
                        print(json.dumps(summary))
                    raise
                if bar is not None:
                    bar.close()
                    bar = None
                summary = report.summary()
                outcome.update({k: v for k, v in summary.items() if k != "job"})
                outcome["job"] = report.job
                if not report.ok:
                    raise _RowsLeftError
                if mode == "encrypt" and phase == 2:
                    # Phase 2 means no plaintext, now and later: check and add the constraint.
                    enforce_ciphertext(engine, spec)
                    outcome["ciphertext_enforced"] = True
                if retire:
                    min_version = service.primary_version
                    with audit.audited(
                        "key_retire",
                        key_version=min_version,
                        details={
                            "min_version": min_version,
                            "delete_stored_deks": bool(args.delete_stored_deks),
                            "via": f"db_{mode}",
                        },
                    ):
                        retire_if_clear(
                            [job], min_version, delete_stored_deks=args.delete_stored_deks
                        )
        except _RowsLeftError:
            print(json.dumps(summary))
            print(
                f"error: {summary['remaining']} row(s) remain and "
                f"{summary['quarantined']} were quarantined",
                file=sys.stderr,
            )
            return 1
        finally:
            audit.close()
        print(json.dumps({**summary, "rows_per_second": round(report.rows_per_second, 1)}))
        if retire:
            print(f"minimum decryption version is now {service.primary_version}")
        return 0
    finally:
        if bar is not None:
            bar.close()
        engine.dispose()
        service.close()


def _cmd_purge(args: argparse.Namespace, make_service: Callable[..., Any]) -> int:
    """``db purge-erased``: prints the report; exit 0 once every row was scanned."""
    from greenlang_crypto.audit import acting_as
    from greenlang_crypto.sqlalchemy._purge import PurgeTarget, purge_erased

    if args.model:
        target = PurgeTarget.of(column_spec(args, need_tenant=False))
    else:
        column_spec(args, need_tenant=False)  # --table and --column are given
        target = PurgeTarget(
            table=args.table,
            column=args.column,
            pk=args.pk or "id",
            index_column=args.index_column,
            version_column=args.version_column,
        )
    service = make_service(args)
    engine = _engine(args)
    try:

        def purge() -> Any:
            return purge_erased(
                engine,
                target,
                service,
                action=args.action,
                dry_run=args.dry_run,
                batch_size=args.batch_size,
                restart=args.restart,
                state_schema=args.state_schema,
            )

        if args.dry_run:
            report = purge()
        else:
            audit = _open_audit(service)
            try:
                with (
                    acting_as(_cli_actor()),
                    audit.audited(
                        "db_purge_erased",
                        details={
                            "table": target.table,
                            "column": target.column,
                            "action": args.action,
                        },
                    ) as outcome,
                ):
                    report = purge()
                    outcome.update(
                        {k: report.as_dict()[k] for k in ("run", "scanned", "erased", "purged")}
                    )
            finally:
                audit.close()
        data = report.as_dict()
        if args.json:
            print(json.dumps(data))
        else:
            verb = "would purge" if report.dry_run else "purged"
            count = report.erased if report.dry_run else report.purged
            resumed = f" (resumed after pk {report.resumed_after})" if report.resumed_after else ""
            print(
                f"{target.table}.{target.column}: scanned {report.scanned}, erased "
                f"{report.erased}, {verb} {count} (action {args.action}){resumed}; "
                f"left alone: {report.not_envelope} not envelopes, "
                f"{report.unreadable_header} unreadable headers"
            )
        return 0
    finally:
        engine.dispose()
        service.close()


def _bar(desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is optional; the JSON summary is printed either way
        return None
    return tqdm(total=0, desc=desc, unit="row", file=sys.stderr)


def _spawn_workers(args: argparse.Namespace) -> int:
    """Runs ``--workers`` copies of this command, each as one named worker process."""
    argv = [a for a in sys.argv[1:]]
    base = args.worker or f"worker-{os.getpid()}"
    ranges = str(args.ranges or args.workers)
    procs = []
    for i in range(args.workers):
        child = _strip_option(
            _strip_option(_strip_option(argv, "--workers"), "--worker"), "--ranges"
        )
        child += ["--workers", "1", "--worker", f"{base}-{i}", "--ranges", ranges]
        # Our own interpreter and our own (already parsed) arguments; no shell.
        cmd = [sys.executable, "-m", "greenlang_crypto", *child]
        procs.append(subprocess.Popen(cmd))  # noqa: S603
    codes = [p.wait() for p in procs]
    return max(codes)


def _strip_option(argv: list[str], name: str) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out
