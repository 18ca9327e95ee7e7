"""The ``greenlang-crypto`` argument parser, bound to the functions that run each command."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence

from greenlang_crypto._core import STREAM_DEFAULT_SEGMENT
from greenlang_crypto._files import FILE_MODE
from greenlang_crypto.cli.crypt import file_mode, thread_count
from greenlang_crypto.cli.extensions import add_extensions, extension_commands

__all__ = ["BUILTIN_COMMANDS", "Handler", "build", "names_builtin_command"]

#: What runs a command: it gets the parsed arguments and returns the exit code.
Handler = Callable[[argparse.Namespace], int]


def _with_context(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--tenant", required=True, help="tenant_id of the encryption context")
    sp.add_argument("--data-class", required=True, help="data_class of the context")
    sp.add_argument("--context", action="append", metavar="KEY=VALUE", help="extra pairs")
    sp.add_argument("-i", "--input", help="input file (default stdin)")
    sp.add_argument("-o", "--output", help="output file (default stdout)")


def _with_threads(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--threads",
        type=thread_count,
        default=1,
        help="threads sealing or opening the segments of a stream in parallel (1..64; "
        "default 1: a second core is already busy writing)",
    )


def _add_crypt(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], run: Mapping[str, Handler]
) -> None:
    enc = sub.add_parser("encrypt", help="encrypt a file or stdin (any size, as a stream)")
    _with_context(enc)
    enc.add_argument("--key-reference", choices=["stored", "inline"], default=None)
    enc.add_argument(
        "--segment-size",
        type=int,
        default=STREAM_DEFAULT_SEGMENT,
        help="plaintext bytes per stream segment (65536..16777216; default 1 MiB)",
    )
    enc.add_argument(
        "--envelope",
        action="store_true",
        help="write one single-shot envelope instead (inputs up to max_plaintext_bytes)",
    )
    _with_threads(enc)
    enc.set_defaults(func=run["encrypt"])
    dec = sub.add_parser("decrypt", help="decrypt a stream or an envelope from a file or stdin")
    _with_context(dec)
    dec.add_argument(
        "--range",
        metavar="START:END",
        help="decrypt only the plaintext bytes START..END-1 (a stream opens only their segments)",
    )
    dec.add_argument(
        "--mode",
        type=file_mode,
        default=FILE_MODE,
        metavar="OCTAL",
        help="permission bits of an output file (default 0600, also when it replaces a file "
        "with a wider mode)",
    )
    _with_threads(dec)
    dec.set_defaults(func=run["decrypt"])


def _add_keys(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], run: Mapping[str, Handler]
) -> None:
    keys = sub.add_parser("keys", help="manage key versions")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    kl = ks.add_parser("list", help="list key versions")
    kl.add_argument("--json", action="store_true")
    kr = ks.add_parser("rotate", help="make a new primary version")
    kr.add_argument("--wrapping-key-id", default=None)
    kw = ks.add_parser("rewrap", help="rewrap stored DEKs under a new wrapping key")
    kw.add_argument("--wrapping-key-id", default=None)
    kt = ks.add_parser("retire", help="raise the minimum decryption version")
    kt.add_argument("--below", type=int, required=True)
    kt.add_argument("--delete-stored-deks", action="store_true")
    kt.add_argument(
        "--force",
        action="store_true",
        help="retire even while live instances or job ranges still use the versions (audited)",
    )
    kss = ks.add_parser("status", help="keyring epoch and the epoch each instance runs")
    kss.add_argument("--json", action="store_true")
    for name, text in (
        ("branch-rotate", "make a new branch key active for one scope"),
        ("branch-delete", "delete one scope's branch keys (crypto-shreds its data)"),
    ):
        kb = ks.add_parser(name, help=text)
        target = kb.add_mutually_exclusive_group(required=True)
        target.add_argument("--scope", help="branch key scope (service, tenant:<id>, ...)")
        target.add_argument("--tenant", help="shorthand for --scope tenant:<id>")
        if name == "branch-delete":
            kb.add_argument("--yes", action="store_true", help="confirm the deletion")
    ke = ks.add_parser(
        "erase",
        help="erase one tenant: destroy its stored DEKs, branch keys and blind-index keys",
    )
    ke.add_argument("--tenant", required=True, help="the tenant id to erase")
    ke.add_argument(
        "--schedule-kms-key-deletion",
        action="store_true",
        help="then schedule the deletion of the tenant's own KMS key (tenant_kms_keys), so "
        "no backup of its keys can be unwrapped again",
    )
    ke.add_argument(
        "--pending-window-days",
        type=int,
        default=30,
        help="days before KMS deletes the key (7-30; default 30)",
    )
    ke.add_argument("--yes", action="store_true", help="confirm the erasure")
    ke.add_argument("--json", action="store_true", help="print the report as JSON")
    keys.set_defaults(func=run["keys"])
    # The autopilot needs the models and the database, so it lives in the `db` group; here
    # it is found beside the other key-lifecycle commands and runs as `db autopilot`.
    if "keys-autopilot" in run:
        ks.add_parser(
            "autopilot",
            help="one rotation-autopilot step: the same as `db autopilot` (its options follow)",
            add_help=False,
        ).set_defaults(func=run["keys-autopilot"], accepts_any_arguments=True)


#: The commands this package runs itself; the others come from :mod:`.extensions`.
BUILTIN_COMMANDS = frozenset({"init", "encrypt", "decrypt", "keys", "status"})

#: Options of the top-level parser that take a value.
_GLOBAL_VALUED = ("--config", "--data-dir")


def names_builtin_command(argv: Sequence[str]) -> bool:
    """Whether ``argv`` runs a built-in command, only global options (spelled out) before it.

    Anything else (``--help``, an abbreviated option, an extension's command, no command)
    answers False, and the caller builds the whole parser.
    """
    args = iter(argv)
    for arg in args:
        if arg in _GLOBAL_VALUED:
            next(args, None)
            continue
        if arg == "--debug" or arg.startswith(tuple(o + "=" for o in _GLOBAL_VALUED)):
            continue
        return arg in BUILTIN_COMMANDS
    return False


def build(
    description: str, run: Mapping[str, Handler], *, extensions: bool = True
) -> argparse.ArgumentParser:
    """The parser; ``run`` maps each built-in command (init, encrypt, ...) to its function.

    Args:
        description: The first line of ``--help``.
        run: The dispatch table of the built-in commands; the extensions bind their own.
        extensions: Add the extensions' commands. Without them (a built-in command runs),
            their names stay among the choices as bare entries, so usage lines read the
            same, and none of their modules is imported.
    """
    p = argparse.ArgumentParser(prog="greenlang-crypto", description=description)
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--data-dir", help="data directory of the embedded default")
    p.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of a failure (it may quote paths and driver messages)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create the master key and keyring").set_defaults(func=run["init"])
    _add_crypt(sub, run)
    _add_keys(sub, run)
    sub.add_parser("status", help="provider health, versions, cache").set_defaults(
        func=run["status"]
    )
    if extensions:
        add_extensions(sub)
    else:
        for name in extension_commands():
            sub.add_parser(name)
    return p
