"""``greenlang-crypto``: the command-line front door. It calls only the EncryptionService.

Commands: ``init``, ``encrypt``, ``decrypt``, ``keys list|rotate|rewrap|retire``, ``status``.
Configuration comes from ``--config FILE`` (TOML) or ``GLC_*`` environment variables; with
neither, the embedded local provider in ``~/.greenlang-crypto`` (or ``$GLC_DATA_DIR``) is used.
A failure is one ``error:`` line on stderr (``--debug`` adds its traceback); the exit code
tells a failed check (1), an error to fix (2), an outage to retry later (3) and an interrupt
(130) apart.

An output file (``-o``) appears only when complete and verified, 0600 unless ``decrypt
--mode`` says otherwise; devices, FIFOs and descriptor links (``/dev/stdout``) are written
in place, as streams.

Layout: :mod:`.parser` (the parser and the dispatch table it binds), one module per command
group (:mod:`.init`, :mod:`.crypt`, :mod:`.keys`, :mod:`.status`, :mod:`.extensions` for the
commands other packages add), :mod:`._io` (inputs and outputs) and :mod:`.errors` (the one
error line and the exit codes). What a command opens comes from
:mod:`greenlang_crypto.composition`, on first use.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from greenlang_crypto.cli import parser as _parser
from greenlang_crypto.cli._io import UsageError
from greenlang_crypto.cli.crypt import cmd_decrypt, cmd_encrypt
from greenlang_crypto.cli.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_RETRY_LATER,
    cli_logging,
    database_outage,
    fail,
    print_traceback,
    quiet_hooks,
    report,
    stray_os_error,
)
from greenlang_crypto.cli.extensions import read_checkpoint_files
from greenlang_crypto.cli.init import cmd_init
from greenlang_crypto.cli.keys import cmd_keys
from greenlang_crypto.cli.status import cmd_status
from greenlang_crypto.exceptions import GreenlangCryptoError

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_RETRY_LATER",
    "build_parser",
    "cmd_decrypt",
    "cmd_encrypt",
    "cmd_init",
    "cmd_keys",
    "cmd_status",
    "main",
]


def _dispatch_table() -> dict[str, _parser.Handler]:
    # Read from this module when a parser is built, so a command function replaced here (a
    # test's stand-in) is the one that runs.
    return {
        "init": cmd_init,
        "encrypt": cmd_encrypt,
        "decrypt": cmd_decrypt,
        "keys": cmd_keys,
        "keys-autopilot": _keys_autopilot,
        "status": cmd_status,
    }


def _keys_autopilot(args: argparse.Namespace) -> int:
    """``keys autopilot ...`` runs as ``db autopilot ...`` (global options kept)."""
    argv: list[str] = args.raw_argv
    # The command is the pair "keys autopilot" (the keys group takes no option of its own);
    # a global option's value may itself be the word "keys" (`--data-dir keys`).
    at = next(i for i in range(len(argv) - 1) if argv[i : i + 2] == ["keys", "autopilot"])
    return _main([*argv[:at], "db", "autopilot", *argv[at + 2 :]], bool(args.debug))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    return _parser.build(__doc__.splitlines()[0], _dispatch_table())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``greenlang-crypto`` command; returns the exit code.

    Every failure is one ``error: ...`` line on stderr, never a traceback unless ``--debug``
    was given: 2 for a usage or typed error (or an unexpected one), 3 for an outage worth
    retrying later, 130 when interrupted.
    """
    # Known before parsing, for a failure while the parser is built.
    given = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in given
    with quiet_hooks(debug):
        return _main(given, debug)


def _main(argv: Sequence[str], debug: bool) -> int:
    try:
        # A built-in command needs none of the extensions' modules: a one-shot encrypt
        # starts without importing them or looking for their extras.
        parser = _parser.build(
            __doc__.splitlines()[0],
            _dispatch_table(),
            extensions=not _parser.names_builtin_command(argv),
        )
        # A command whose extra is missing accepts whatever follows it, so that the user
        # learns which extra to install rather than which of its arguments were wrong.
        args, unknown = parser.parse_known_args(argv)
        args.raw_argv = list(argv)
        debug = bool(getattr(args, "debug", debug))
        if unknown and not getattr(args, "accepts_any_arguments", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        cli_logging(args.command, debug)
        read_checkpoint_files(args)
        return int(args.func(args))
    except KeyboardInterrupt:
        print_traceback(debug)
        return fail("interrupted", EXIT_INTERRUPTED)
    except GreenlangCryptoError as exc:
        print_traceback(debug)
        return report(exc)
    except UsageError as exc:
        print_traceback(debug)
        return fail(str(exc), EXIT_ERROR)
    except OSError as exc:
        print_traceback(debug)
        return stray_os_error(exc)
    except Exception as exc:
        print_traceback(debug)
        outage = database_outage(exc)
        if outage is not None:
            return report(outage)
        # A bug, or a database refusing a statement. Its message may quote anything it was
        # handed (a driver's DETAIL shows the failing row), so only the types are named;
        # --debug prints the traceback a report needs.
        orig = getattr(exc, "orig", None)
        driver = f" ({type(orig).__name__})" if isinstance(orig, BaseException) else ""
        hint = "" if debug else "; rerun with --debug for the traceback"
        return fail(f"unexpected {type(exc).__name__}{driver}{hint}", EXIT_ERROR)
