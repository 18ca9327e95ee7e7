"""CLI subcommands contributed by `greenlang_crypto.sqlalchemy` (none yet)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(
    subparsers: Any,
    make_service: Callable[[argparse.Namespace], Any],
    make_config: Callable[[argparse.Namespace], Any],
) -> None:
    """Adds this package's subcommands to the `greenlang-crypto` parser."""
