"""CLI subcommands contributed by ``greenlang_crypto.api``: ``serve``, ``token``, ``audit``.

FastAPI, uvicorn and PyJWT are imported only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from greenlang_crypto.composition import audit_url_from_env, open_audit_log
from greenlang_crypto.exceptions import ConfigurationError

__all__ = ["register"]


def _audit_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.audit_url or audit_url_from_env()
    return url


def _anchor_urls(args: argparse.Namespace) -> list[str]:
    """Anchors named with ``--anchor``/``--audit-anchor``, else in ``$GLC_AUDIT_ANCHORS``."""
    given: list[str] = list(getattr(args, "anchor", None) or [])
    if not given:
        env = os.environ.get("GLC_AUDIT_ANCHORS", "")
        given = [u.strip() for u in env.split(",") if u.strip()]
    return given


def cmd_serve(args: argparse.Namespace, make_config: Callable[[argparse.Namespace], Any]) -> int:
    """Runs the admin API with uvicorn (embedded default: local keys, SQLite audit log)."""
    import uvicorn

    from greenlang_crypto.api.app import build_stack, create_app
    from greenlang_crypto.api.auth import AuthSettings, JwtAuthorizer, dev_settings

    config = make_config(args)
    if args.jwt_key_file:
        try:
            key = Path(args.jwt_key_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            # Only the path and the reason: the file is a key, nothing of it is printed.
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigurationError(
                f"cannot read --jwt-key-file {args.jwt_key_file}: {reason}"
            ) from exc
        algorithms = tuple(a.strip() for a in args.jwt_algorithms.split(",") if a.strip())
        settings = AuthSettings(
            algorithms=algorithms,
            key=key,
            issuer=args.jwt_issuer,
            audience=args.jwt_audience,
        )
    else:
        # Development mode: tokens minted by `greenlang-crypto token` for this data directory.
        settings = dev_settings(config.data_dir)
    stack = build_stack(
        config,
        audit_url=_audit_url(args),
        flush_interval=args.audit_flush_interval,
        anchors=_anchor_urls(args),
    )
    app = create_app(
        stack.service,
        stack.audit,
        authorizer=JwtAuthorizer(settings),
        registry=stack.registry,
        max_buffered_body_bytes=args.max_buffered_body_bytes,
        refusal_interval=args.refusal_audit_interval,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        stack.close()
    return 0


def cmd_token(args: argparse.Namespace, make_config: Callable[[argparse.Namespace], Any]) -> int:
    """Prints a development token signed with the data directory's local secret."""
    from greenlang_crypto.api.auth import (
        FLEET_PERMISSION,
        KNOWN_PERMISSIONS,
        dev_secret,
        mint_token,
    )

    config = make_config(args)
    perms = [p.strip() for item in args.permissions for p in item.split(",") if p.strip()]
    unknown = sorted(set(perms) - set(KNOWN_PERMISSIONS))
    if unknown:
        print(
            f"error: unknown permission(s) {unknown}; known: {list(KNOWN_PERMISSIONS)}",
            file=sys.stderr,
        )
        return 2
    if args.tenant is not None and FLEET_PERMISSION in perms:
        print(
            f"error: {FLEET_PERMISSION} is for fleet operators and cannot be combined with "
            "--tenant",
            file=sys.stderr,
        )
        return 2
    token = mint_token(
        dev_secret(config.data_dir),
        subject=args.subject,
        permissions=perms,
        tenant=args.tenant,
        ttl=args.ttl,
    )
    print(token)
    return 0


def _open_audit(
    args: argparse.Namespace,
    make_service: Callable[[argparse.Namespace], Any],
    make_config: Callable[[argparse.Namespace], Any],
) -> Any:
    audit = open_audit_log(
        make_config(args),
        url=_audit_url(args),
        anchor_urls=_anchor_urls(args),
        start_thread=False,
    )
    try:
        audit.bind(make_service(args))
    except BaseException:
        audit.sink.close()
        raise
    return audit


def _given_checkpoints(args: argparse.Namespace) -> list[str]:
    """``--checkpoint`` lines, plus every checkpoint line of each ``--checkpoint-file``."""
    from greenlang_crypto.audit.anchors import StreamAnchor

    lines = list(args.checkpoint or [])
    for path in args.checkpoint_file or []:
        # A shipped log holds other lines too; the checkpoint lines carry the anchor's prefix.
        with open(path, encoding="utf-8", errors="replace") as f:
            lines += [ln for ln in f if "glc-audit-checkpoint" in ln]
    for line in lines:
        StreamAnchor.parse(line)  # unreadable: refused before verifying anything
    return lines


def cmd_audit(
    args: argparse.Namespace,
    make_service: Callable[[argparse.Namespace], Any],
    make_config: Callable[[argparse.Namespace], Any],
) -> int:
    """``audit verify`` checks the HMAC chain; ``audit tail`` prints the last records."""
    if args.audit_command == "verify":
        try:
            given = _given_checkpoints(args)
        except (OSError, ValueError) as exc:
            print(f"error: unreadable checkpoint ({type(exc).__name__})", file=sys.stderr)
            return 2
        audit = _open_audit(args, make_service, make_config)
        try:
            if not audit.anchors and not given:
                # Without an anchor nothing outside the database vouches for the head, so a
                # log cut short and re-chained by someone holding the key store cannot be
                # told apart.
                print(
                    "warning: no audit anchor configured; a truncated log cannot be detected "
                    "(use --anchor or --checkpoint)",
                    file=sys.stderr,
                )
            result = audit.verify(given or None)
        finally:
            # Only the sink: these commands read, and closing the log would write a
            # checkpoint. An unreachable sink has raised already (exit code 3).
            audit.sink.close()
        for p in result.problems:
            print(f"BAD record seq {p.seq}: {p.kind}: {p.detail}")
        if result.ok:
            print(f"ok: {result.records} record(s), chain intact")
            return 0
        print(f"FAILED: {len(result.problems)} problem(s) in {result.records} record(s)")
        return 1
    audit = _open_audit(args, make_service, make_config)
    try:
        records = audit.tail(args.n)
    finally:
        audit.sink.close()
    for record in records:
        print(json.dumps(record.to_dict(), sort_keys=True))
    return 0


def register(
    subparsers: Any,
    make_service: Callable[[argparse.Namespace], Any],
    make_config: Callable[[argparse.Namespace], Any],
) -> None:
    """Adds ``serve``, ``token`` and ``audit`` to the ``greenlang-crypto`` parser."""
    serve = subparsers.add_parser("serve", help="run the admin API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--audit-url", default=None, help="sqlite:///, postgresql://, jsonl://")
    serve.add_argument("--audit-flush-interval", type=float, default=10.0)
    serve.add_argument(
        "--audit-anchor",
        dest="anchor",
        action="append",
        metavar="URL",
        help="where checkpoints go besides the default (file:///, s3://bucket/prefix, stdout, "
        "syslog; repeatable; default $GLC_AUDIT_ANCHORS)",
    )
    serve.add_argument("--jwt-key-file", default=None, help="verification key (PEM or secret)")
    serve.add_argument("--jwt-algorithms", default="RS256", help="pinned allow-list, comma list")
    serve.add_argument("--jwt-issuer", default=None)
    serve.add_argument("--jwt-audience", default=None)
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--max-buffered-body-bytes",
        type=int,
        default=None,
        help="request bodies buffered at once (default: the process-wide budget, 12 MiB)",
    )
    serve.add_argument(
        "--refusal-audit-interval",
        type=float,
        default=60.0,
        help="seconds between the audit records counting refused requests per source",
    )
    serve.set_defaults(func=lambda a: cmd_serve(a, make_config))

    token = subparsers.add_parser("token", help="mint a development API token")
    token.add_argument(
        "--permissions",
        action="append",
        required=True,
        help="comma list, e.g. encryption:read; encryption:fleet (fleet-wide routes) only "
        "without --tenant",
    )
    token.add_argument("--tenant", default=None)
    token.add_argument("--subject", default=os.environ.get("USER") or "dev")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds")
    token.set_defaults(func=lambda a: cmd_token(a, make_config))

    audit = subparsers.add_parser("audit", help="verify or show the audit log")
    audit.add_argument("--audit-url", default=None, help="sqlite:///, postgresql://, jsonl://")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser("verify", help="check the HMAC chain; exit 1 naming bad records")
    verify.add_argument(
        "--anchor",
        action="append",
        metavar="URL",
        help="also check against this anchor's checkpoints (file:///, s3://bucket/prefix; "
        "repeatable; default $GLC_AUDIT_ANCHORS)",
    )
    verify.add_argument(
        "--checkpoint",
        action="append",
        metavar="LINE",
        help="a checkpoint line shipped by the stdout or syslog anchor (repeatable)",
    )
    verify.add_argument(
        "--checkpoint-file",
        action="append",
        metavar="PATH",
        help="a shipped log: every checkpoint line in it is checked (repeatable)",
    )
    tail = sub.add_parser("tail", help="print the last records as JSON lines")
    tail.add_argument("-n", type=int, default=20)
    audit.set_defaults(func=lambda a: cmd_audit(a, make_service, make_config))
