"""What every command of the CLI starts from: its configuration, context and composition."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from greenlang_crypto import composition
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import GreenlangCryptoError

if TYPE_CHECKING:
    from greenlang_crypto.service import EncryptionService

__all__ = [
    "cli_actor",
    "config_of",
    "context_of",
    "initialized_config",
    "one_shot",
    "service_of",
]


def config_of(args: argparse.Namespace) -> EncryptionServiceConfig:
    """The configuration: ``--config FILE``, else ``GLC_*``; ``--data-dir`` overrides."""
    if args.config:
        cfg = EncryptionServiceConfig.from_toml(args.config)
    else:
        cfg = EncryptionServiceConfig.from_env()
    if args.data_dir:
        values = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
        values["data_dir"] = Path(args.data_dir)
        cfg = EncryptionServiceConfig(**values)
    return cfg


def initialized_config(args: argparse.Namespace) -> EncryptionServiceConfig:
    """:func:`config_of`, refused for an embedded default never initialized."""
    cfg = config_of(args)
    composition.require_initialized(cfg)
    return cfg


def cli_actor() -> str:
    """Who the audit records of a command name: ``cli:<user>``."""
    return f"cli:{os.environ.get('USER') or os.getuid()}"


def one_shot(args: argparse.Namespace) -> composition.Composition:
    """The lazy composition of one command: it opens only what the command touches.

    The service is left open at the end of the command, as the process ends with it (its
    keyring stops and deregisters at exit).
    """
    return composition.Composition(config_of(args), actor=cli_actor(), close_service=False)


def service_of(args: argparse.Namespace) -> EncryptionService:
    """The service of an initialized configuration (what extension commands are given)."""
    return one_shot(args).service


def context_of(args: argparse.Namespace) -> EncryptionContext:
    """The encryption context of ``--tenant``, ``--data-class`` and ``--context K=V``."""
    extra: dict[str, str] = {}
    for pair in args.context or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise GreenlangCryptoError(f"--context expects KEY=VALUE, got {key!r}")
        extra[key] = value
    return EncryptionContext(tenant_id=args.tenant, data_class=args.data_class, extra=extra)
