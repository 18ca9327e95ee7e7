"""Subcommands other packages contribute: ``serve``, ``token``, ``audit``, ``db``, ``verify``.

Each module registers its commands through ``register(subparsers, make_service,
make_config)`` and imports its optional dependencies only when a command runs. A command
whose extra is not installed still appears, and says which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from greenlang_crypto.cli._common import config_of, initialized_config, service_of
from greenlang_crypto.cli._io import UsageError, unreadable

__all__ = [
    "EXTENSIONS",
    "Extension",
    "add_extensions",
    "extension_commands",
    "read_checkpoint_files",
]


@dataclass(frozen=True, slots=True)
class Extension:
    """A module contributing subcommands through ``register(subparsers, make_service, config)``.

    Attributes:
        module: The module to import; it must import its optional dependencies only when a
            command runs, so that registering costs nothing.
        requires: Per command name: the extra it needs and the top-level modules of that extra.
        needs_init: Its commands work only on an initialized embedded default (they are given
            a configuration only after that check).
    """

    module: str
    requires: dict[str, tuple[str, tuple[str, ...]]]
    needs_init: bool = False


_API_MODULES = ("fastapi", "uvicorn", "jwt", "prometheus_client")

#: The contributing modules, in the order their commands appear in ``--help``.
EXTENSIONS = (
    Extension(
        "greenlang_crypto.api.commands",
        {"serve": ("api", _API_MODULES), "token": ("api", ("jwt",)), "audit": ("", ())},
        needs_init=True,
    ),
    Extension("greenlang_crypto.sqlalchemy.commands", {"db": ("sqlalchemy", ("sqlalchemy",))}),
    Extension("greenlang_crypto.compliance.commands", {"verify": ("", ())}),
)


def _missing_extra(extra: str, modules: tuple[str, ...]) -> str | None:
    """The extra to install when one of ``modules`` cannot be imported, else None."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            return extra
    return None


def _needs_extra(extra: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(
            f"error: `{args.command}` needs the {extra} extra: "
            f'pip install "greenlang-crypto[{extra}]"',
            file=sys.stderr,
        )
        return 2

    return run


class _GatedSubparsers:
    """Passes ``add_parser`` through, except for commands whose extra is not installed.

    Those get a placeholder that takes any arguments and says which extra to install; the
    extension's own parser for them is built detached and thrown away, so argument errors of
    a command the user cannot run never hide the real message.
    """

    def __init__(self, sub: Any, missing: dict[str, str]) -> None:
        self._sub = sub
        self._missing = missing

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        extra = self._missing.get(name)
        if extra is None:
            parser: argparse.ArgumentParser = self._sub.add_parser(name, **kwargs)
            return parser
        helptext = kwargs.get("help") or name
        placeholder = self._sub.add_parser(
            name, help=f"{helptext} (needs: pip install 'greenlang-crypto[{extra}]')"
        )
        placeholder.set_defaults(func=_needs_extra(extra), accepts_any_arguments=True)
        return argparse.ArgumentParser(prog=name, add_help=False)


def extension_commands() -> list[str]:
    """The commands the extensions add, in the order they add them."""
    return [name for ext in EXTENSIONS for name in ext.requires]


def add_extensions(sub: Any) -> None:
    """Adds every extension's subcommands to ``sub`` (the top-level subparsers)."""
    for ext in EXTENSIONS:
        # Front doors with optional dependencies add their own subcommands (serve, token,
        # audit, db, verify); each module imports its heavy dependencies only when run, and a
        # command whose extra is missing says which one to install.
        missing = {
            name: extra
            for name, (extra, modules) in ext.requires.items()
            if _missing_extra(extra, modules) is not None
        }
        module = importlib.import_module(ext.module)
        make_config = initialized_config if ext.needs_init else config_of
        module.register(_GatedSubparsers(sub, missing), service_of, make_config)


def read_checkpoint_files(args: argparse.Namespace) -> None:
    """Reads ``audit verify --checkpoint-file`` files with the anchors' own reader.

    Each file may be a copy of a file anchor (JSON lines), an object the S3 anchor put, or a
    shipped log holding the stdout or syslog anchor's lines; its checkpoints join the
    ``--checkpoint`` ones. A file that yields none is an error: a copy of the wrong file, or
    one emptied, must not let a cut log pass as verified.

    Raises:
        UsageError: A file is unreadable, holds a malformed checkpoint, or holds none.
    """
    if args.command != "audit" or getattr(args, "audit_command", None) != "verify":
        return
    files = getattr(args, "checkpoint_file", None)
    if not files:
        return
    from greenlang_crypto.audit.anchors import read_checkpoint_file

    given = list(getattr(args, "checkpoint", None) or [])
    for path in files:
        try:
            found = read_checkpoint_file(path)
        except OSError as exc:
            raise unreadable(path, exc) from exc
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not found:
            raise UsageError(
                f"--checkpoint-file {path} holds no checkpoint (expected an anchor file, an "
                "S3 anchor object or a log with glc-audit-checkpoint lines)"
            )
        given += [cp.to_json() for cp in found]
    args.checkpoint = given
    args.checkpoint_file = []
