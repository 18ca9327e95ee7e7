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
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import importlib.util
import io
import json
import logging
import os
import sqlite3
import stat
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from greenlang_crypto._core import STREAM_DEFAULT_SEGMENT, STREAM_MAGIC
from greenlang_crypto._files import FILE_MODE, atomic_directory, atomic_output, output_error
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    AuditSinkUnavailableError,
    ConfigurationError,
    GreenlangCryptoError,
    KeyStoreUnavailableError,
    KmsUnavailableError,
    OutputError,
    PayloadTooLargeError,
    UnavailableError,
)

__all__ = ["main"]


@dataclass(frozen=True, slots=True)
class _Extension:
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
_EXTENSIONS = (
    _Extension(
        "greenlang_crypto.api.commands",
        {"serve": ("api", _API_MODULES), "token": ("api", ("jwt",)), "audit": ("", ())},
        needs_init=True,
    ),
    _Extension("greenlang_crypto.sqlalchemy.commands", {"db": ("sqlalchemy", ("sqlalchemy",))}),
    _Extension("greenlang_crypto.compliance.commands", {"verify": ("", ())}),
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


def _config(args: argparse.Namespace) -> EncryptionServiceConfig:
    if args.config:
        cfg = EncryptionServiceConfig.from_toml(args.config)
    else:
        cfg = EncryptionServiceConfig.from_env()
    if args.data_dir:
        values = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
        values["data_dir"] = Path(args.data_dir)
        cfg = EncryptionServiceConfig(**values)
    return cfg


def _require_initialized(cfg: EncryptionServiceConfig) -> None:
    """Refuses, before anything is created, to work on an embedded default never initialized.

    Without this check a command run before ``init`` would create an empty key store (and the
    data directory) on its way to failing.
    """
    if cfg.provider != "local" or cfg.key_store_url is not None:
        return
    from greenlang_crypto.providers.local import LocalKeyProvider

    if not LocalKeyProvider(cfg.data_dir).versions():
        raise ConfigurationError(
            f"{cfg.data_dir} is not initialized; run `greenlang-crypto init` first"
        )


def _initialized_config(args: argparse.Namespace) -> EncryptionServiceConfig:
    cfg = _config(args)
    _require_initialized(cfg)
    return cfg


def _service(args: argparse.Namespace) -> Any:
    from greenlang_crypto.service import EncryptionService

    cfg = _config(args)
    _require_initialized(cfg)
    return EncryptionService(cfg)


def _context(args: argparse.Namespace) -> EncryptionContext:
    extra: dict[str, str] = {}
    for pair in args.context or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise GreenlangCryptoError(f"--context expects KEY=VALUE, got {key!r}")
        extra[key] = value
    return EncryptionContext(tenant_id=args.tenant, data_class=args.data_class, extra=extra)


class _UsageError(Exception):
    """A problem with the command line or the files it names (exit code 2, one line)."""


def _unreadable(path: str | None, exc: OSError) -> _UsageError:
    name = "standard input" if path in (None, "-") else path
    return _UsageError(f"cannot read {name}: {exc.strerror or type(exc).__name__}")


def _read_input(path: str | None, limit: int) -> bytes:
    """Reads the input, refusing more than ``limit`` bytes before reading them."""
    if path in (None, "-"):
        # A pipe has no size: read one byte past the limit to tell "too large" apart.
        try:
            data = sys.stdin.buffer.read(limit + 1)
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        if len(data) > limit:
            raise PayloadTooLargeError(f"input is larger than {limit} bytes")
        return data
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if stat.S_ISREG(os.fstat(f.fileno()).st_mode) and size > limit:
                raise PayloadTooLargeError(f"input is {size} bytes, more than {limit}")
            data = f.read(limit + 1)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if len(data) > limit:
        raise PayloadTooLargeError(f"input is larger than {limit} bytes")
    return data


def _write_output(path: str | None, data: bytes, mode: int = FILE_MODE) -> None:
    """Writes stdout, or a file atomically with ``mode`` (0600 unless told otherwise)."""
    with _output(path, mode) as out:
        view = memoryview(data)
        while view:  # the file is unbuffered: a write may take only part of the data
            view = view[out.write(view) :]


def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is optional; counts are still printed at the end
        return None
    return tqdm(total=total, desc=desc, unit="key", file=sys.stderr)


def cmd_init(args: argparse.Namespace) -> int:
    """Creates the data directory, the first master key and the keyring, all or nothing."""
    from greenlang_crypto.service import EncryptionService

    cfg = _config(args)
    if cfg.provider == "local":
        from greenlang_crypto.providers.local import LocalKeyProvider

        created = False
        if not LocalKeyProvider(cfg.data_dir).versions():
            created = _init_data_dir(cfg)
        svc = EncryptionService.init_local(config=cfg)
        if created:
            print(f"created the master key in {cfg.data_dir} (mode 0600)")
        else:
            print(f"already initialized: {cfg.data_dir}")
    else:
        svc = EncryptionService(cfg)
    print(f"keyring ready: primary version {svc.primary_version}")
    svc.close()
    return 0


def _init_data_dir(cfg: EncryptionServiceConfig) -> bool:
    """Builds the data directory beside its name and renames it into place.

    A directory half made (a full disk, a kill) would hold a key store without its master
    key, or a master key without its keyring, and the next run would take it for an
    initialized one. Built under a temporary name, it is complete or absent. Returns False
    when another ``init`` finished first (its directory is the one kept).

    Raises:
        ConfigurationError: The directory exists, is not empty and holds no master key.
        OutputError: The directory could not be written (a full disk, say); nothing is left.
    """
    from greenlang_crypto.providers.local import LocalKeyProvider
    from greenlang_crypto.service import EncryptionService

    target = Path(cfg.data_dir)
    with contextlib.suppress(FileNotFoundError):
        if any(target.iterdir()):
            if LocalKeyProvider(target).versions():
                return False  # another init finished meanwhile
            raise ConfigurationError(
                f"{target} is not empty and holds no master key; move it away (or empty it) "
                "and run `greenlang-crypto init` again"
            )
    values = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    try:
        with atomic_directory(target) as building:
            values["data_dir"] = building
            try:
                if cfg.key_store_url is None:
                    # The embedded default: the keyring lives in the directory too.
                    EncryptionService.init_local(config=EncryptionServiceConfig(**values)).close()
                else:
                    # The keyring lives in the configured store, opened once the master key
                    # has its final place.
                    LocalKeyProvider(building).create_master_key()
            except OSError as exc:
                raise output_error(target, exc) from exc
            except sqlite3.Error as exc:
                # The embedded key store is a file in the directory being built: its
                # failure is a write that failed here (a full disk), not an outage to wait
                # out. SQLite's messages name the condition, never data.
                raise OutputError(f"cannot write {target}: {exc}") from exc
    except FileExistsError:
        return False
    return True


class _Prefixed:
    """A source whose first bytes were already read (to tell a stream from an envelope)."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readinto(self, buffer: Any) -> int:
        if len(self._head):
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._rest.readinto(buffer) or 0


class _InputFile(io.FileIO):
    """The input file: a read that fails (an I/O error, a vanished mount) is a usage error.

    The stream code between the input and the output passes errors on as they are; failing
    here with our own type keeps an unreadable input from being reported as a failed output.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, "rb")
        self.path = path

    def readinto(self, buffer: Any, /) -> int:
        try:
            return super().readinto(buffer)
        except OSError as exc:
            raise _unreadable(self.path, exc) from exc

    def read(self, size: int | None = -1, /) -> bytes:
        try:
            return super().read(size)
        except OSError as exc:
            raise _unreadable(self.path, exc) from exc

    def readall(self) -> bytes:
        try:
            return super().readall()
        except OSError as exc:
            raise _unreadable(self.path, exc) from exc


class _Writable(Protocol):
    def write(self, data: Any, /) -> int: ...


class _Stdout:
    """Standard output, whose failing writes raise :class:`OutputError` (cause chained)."""

    def __init__(self) -> None:
        self._out = sys.stdout.buffer

    def write(self, data: Any, /) -> int:
        try:
            return self._out.write(data)
        except OSError as exc:
            raise OutputError(_stdout_failure(exc)) from exc

    def flush(self) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            raise OutputError(_stdout_failure(exc)) from exc


def _stdout_failure(exc: OSError) -> str:
    return f"cannot write standard output: {exc.strerror or type(exc).__name__}"


@contextlib.contextmanager
def _input(path: str | None) -> Iterator[BinaryIO]:
    """stdin, or the file at ``path`` opened unbuffered (the stream code reads big runs)."""
    if path in (None, "-"):
        yield sys.stdin.buffer
        return
    try:
        f = _InputFile(path)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    with f:
        yield f


@contextlib.contextmanager
def _output(path: str | None, mode: int = FILE_MODE) -> Iterator[_Writable]:
    """stdout, or a file that appears under ``path`` only when the block succeeds.

    A regular file is written where nobody sees it (see ``atomic_output``) and gets ``mode``
    (0600 by default, whatever mode a replaced file had) before its name; on any error
    nothing is left. A device, FIFO or descriptor link is written in place. Failing writes
    raise :class:`OutputError`.
    """
    if path in (None, "-"):
        out = _Stdout()
        yield out
        out.flush()
        return
    with atomic_output(path, mode=mode) as f:
        yield f


@contextlib.contextmanager
def _byte_progress(total: int | None, desc: str) -> Iterator[Callable[[int], object] | None]:
    """A tqdm bar (bytes, rate, ETA) on a terminal; nothing when stderr is piped."""
    if not sys.stderr.isatty():
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:  # the cli extra is not installed: no bar
        yield None
        return
    bar = tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr
    )
    try:
        yield bar.update
    finally:
        bar.close()


def _input_size(src: BinaryIO) -> int | None:
    try:
        st = os.fstat(src.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _thread_count(text: str) -> int:
    """``--threads``: an int in 1..64 (argparse reports the error as a usage error)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError("expected 1..64")
    return n


def _file_mode(text: str) -> int:
    """``--mode``: octal permission bits (``640``, ``0o640``), at most 0777."""
    try:
        mode = int(text.removeprefix("0o"), 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected octal permission bits, got {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(
            "expected permission bits 0..0777 (no setuid, setgid or sticky)"
        )
    return mode


def _parse_range(text: str | None) -> tuple[int, int | None]:
    """``START:END`` (either side may be empty) as plaintext byte offsets, END exclusive."""
    if text is None:
        return 0, None
    start_s, sep, end_s = text.partition(":")
    try:
        if not sep:
            raise ValueError
        start = int(start_s) if start_s else 0
        end = int(end_s) if end_s else None
    except ValueError:
        raise _UsageError(f"--range expects START:END in bytes, got {text!r}") from None
    if start < 0 or (end is not None and end < start):
        raise _UsageError("--range needs 0 <= START <= END")
    return start, end


def cmd_encrypt(args: argparse.Namespace) -> int:
    """Encrypts a file or stdin to a file or stdout: a stream, in constant memory."""
    svc = _service(args)
    if args.envelope:
        data = _read_input(args.input, svc.config.max_plaintext_bytes)
        env = svc.encrypt(data, _context(args), key_reference=args.key_reference)
        _write_output(args.output, env)
        return 0
    ctx = _context(args)
    with (
        _input(args.input) as src,
        _output(args.output) as dst,
        _byte_progress(_input_size(src), "encrypt") as progress,
    ):
        svc.encrypt_stream(
            src,
            dst,
            ctx,
            segment_size=args.segment_size,
            key_reference=args.key_reference,
            threads=args.threads,
            progress=progress,
        )
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    """Decrypts a stream (any size, constant memory) or an envelope to a file or stdout."""
    svc = _service(args)
    ctx = _context(args)
    start, end = _parse_range(args.range)
    with _input(args.input) as src:
        seekable = src.seekable()
        head = src.read(1) or b""
        if seekable:
            src.seek(0)
        if head[:1] == bytes([STREAM_MAGIC]):
            source: Any = src if seekable else _Prefixed(head, src)
            with _output(args.output, args.mode) as dst:
                size = _input_size(src) if end is None else end - start
                with _byte_progress(size, "decrypt") as progress:
                    svc.decrypt_stream(
                        source,
                        dst,
                        ctx,
                        start=start,
                        end=end,
                        threads=args.threads,
                        progress=progress,
                    )
            return 0
        # A single-shot envelope (what encrypt wrote before streams, or --envelope).
        # An envelope adds a bounded header to its plaintext; 64 KiB covers the largest one.
        limit = svc.config.max_plaintext_bytes + 65536
        data = src.read(limit + 1) if seekable else head + src.read(limit + 1 - len(head))
        if len(data) > limit:
            raise PayloadTooLargeError(f"input is larger than {limit} bytes")
    plaintext = svc.decrypt(data, ctx)
    _write_output(args.output, plaintext[start:end], args.mode)
    return 0


def _cli_actor() -> str:
    return f"cli:{os.environ.get('USER') or os.getuid()}"


def _open_audit(args: argparse.Namespace, svc: Any) -> Any:
    """The audit log of this data directory (or ``$GLC_AUDIT_URL``), attached to ``svc``.

    Its checkpoints go to the same anchors as every other writer's (the file beside a file
    log and ``$GLC_AUDIT_ANCHORS``): a log whose latest records no anchor vouches for can
    lose them unseen.
    """
    from greenlang_crypto.audit import AuditLog, open_audit_sink
    from greenlang_crypto.audit.anchors import configured_anchors

    cfg = _config(args)
    sink = open_audit_sink(os.environ.get("GLC_AUDIT_URL") or None, cfg.data_dir)
    try:
        anchors = configured_anchors(sink)
    except BaseException:
        sink.close()
        raise
    audit = AuditLog(sink, start_thread=False, actor=_cli_actor(), anchors=anchors)
    audit.attach(svc)
    return audit


def _audited(args: argparse.Namespace, svc: Any, action: str, run: Any) -> Any:
    """Runs a security-relevant key operation behind an audit intent record.

    The intent is written first and must succeed: if the audit sink is down the operation
    fails closed (AuditSinkUnavailableError) and nothing changes.
    """
    from greenlang_crypto.audit import acting_as

    audit = _open_audit(args, svc)
    try:
        # One intent and one outcome per action: the service's key-change guard (the audit
        # log) writes nothing more inside an open audited block.
        with acting_as(_cli_actor()), audit.audited(action, _cli_actor()):
            return run()
    finally:
        audit.close()


def cmd_keys(args: argparse.Namespace) -> int:
    """Lists, rotates, rewraps or retires key versions (changes are audited, fail closed)."""
    svc = _service(args)
    if args.keys_command == "list":
        rows = [
            {
                "version": v.version,
                "state": v.state,
                "provider": v.provider,
                "wrapping_key_id": v.wrapping_key_id,
            }
            for v in svc.versions()
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(
                    f"v{r['version']:<4} {r['state']:<13} {r['provider']:<8} {r['wrapping_key_id']}"
                )
        return 0
    if args.keys_command == "rotate":
        result = _audited(
            args, svc, "key_rotate", lambda: svc.rotate(new_wrapping_key_id=args.wrapping_key_id)
        )
        print(f"rotated: v{result.old_version} -> v{result.new_version} ({result.wrapping_key_id})")
        return 0
    if args.keys_command == "rewrap":
        target = args.wrapping_key_id
        if target is None:
            if not svc.can_create_wrapping_key():
                raise GreenlangCryptoError("--wrapping-key-id is required for this provider")
            target = svc.create_wrapping_key()
        total = svc.stored_dek_count()
        bar = _progress(total, "rewrap")
        done = _audited(
            args,
            svc,
            "key_rewrap",
            lambda: svc.rewrap(target, progress=bar.update if bar is not None else None),
        )
        if bar is not None:
            bar.close()
        print(f"rewrapped {done} stored DEK(s) under {target}")
        return 0
    if args.keys_command == "retire":
        _audited(
            args,
            svc,
            "key_retire",
            lambda: svc.retire_versions_below(
                args.below, delete_stored_deks=args.delete_stored_deks, force=args.force
            ),
        )
        print(f"minimum decryption version is now {svc.min_decryption_version}")
        return 0
    if args.keys_command == "status":
        return _keys_status(args, svc)
    if args.keys_command in ("branch-rotate", "branch-delete"):
        return _keys_branch(args, svc)
    raise AssertionError(args.keys_command)


def _keys_branch(args: argparse.Namespace, svc: Any) -> int:
    """Rotates or deletes the branch keys of one scope (``--scope`` or ``--tenant``)."""
    # argparse requires exactly one of the two.
    scope = args.scope or "tenant:" + args.tenant
    if args.keys_command == "branch-rotate":
        branch_id = _audited(args, svc, "branch_key_rotate", lambda: svc.rotate_branch_key(scope))
        print(f"branch key of {scope} rotated: new id {branch_id}")
        return 0
    if not args.yes:
        raise GreenlangCryptoError(
            f"deleting the branch keys of {scope} makes its data unreadable forever; add --yes"
        )
    deleted = _audited(args, svc, "branch_key_delete", lambda: svc.delete_branch_keys(scope))
    print(f"deleted {deleted} branch key(s) of {scope}")
    return 0


def _keys_status(args: argparse.Namespace, svc: Any) -> int:
    """Prints the keyring (epoch, primary, minimum) and which instance runs which epoch."""
    import time

    svc.refresh_keyring()
    live = {i.instance_id for i in svc.live_instances()}
    doc = {
        "epoch": svc.keyring_epoch,
        "primary_version": svc.primary_version,
        "min_decryption_version": svc.min_decryption_version,
        "instances": [
            {
                "instance_id": i.instance_id,
                "host": i.host,
                "pid": i.pid,
                "epoch": i.epoch,
                "primary_version": i.primary_version,
                "min_version": i.min_version,
                "last_seen_seconds_ago": round(max(0.0, time.time() - i.last_seen), 1),
                "live": i.instance_id in live,
                "current": i.epoch == svc.keyring_epoch,
            }
            for i in svc.instances()
            if i.instance_id != svc.instance_id
        ],
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"keyring epoch {doc['epoch']}: primary v{doc['primary_version']}, "
        f"minimum decryption version {doc['min_decryption_version']}"
    )
    for row in doc["instances"]:
        assert isinstance(row, dict)
        state = ("live" if row["live"] else "stale") + ("" if row["current"] else ", behind")
        print(
            f"{row['host']}:{row['pid']:<8} epoch {row['epoch']:<6} primary "
            f"v{row['primary_version']:<4} seen {row['last_seen_seconds_ago']}s ago ({state})"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Prints provider health, key versions and cache counters."""
    st = _service(args).status()
    doc = {
        "provider": st.provider,
        "provider_ok": st.provider_ok,
        "provider_detail": st.provider_detail,
        "primary_version": st.primary_version,
        "min_decryption_version": st.min_decryption_version,
        "versions": [{"version": v.version, "state": v.state} for v in st.versions],
        "stored_deks_by_version": st.deks_by_version,
        "usage_by_version": {
            v: {"deks": n, "messages": m, "bytes": b}
            for v, (n, m, b) in st.usage_by_version.items()
        },
        "cache": st.cache,
        "keyring_epoch": st.keyring_epoch,
        "instances": [
            {"host": i.host, "pid": i.pid, "epoch": i.epoch, "primary_version": i.primary_version}
            for i in st.instances
        ],
    }
    print(json.dumps(doc, indent=2))
    return 0 if st.provider_ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(prog="greenlang-crypto", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--data-dir", help="data directory of the embedded default")
    p.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of a failure (it may quote paths and driver messages)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create the master key and keyring").set_defaults(func=cmd_init)

    def with_context(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--tenant", required=True, help="tenant_id of the encryption context")
        sp.add_argument("--data-class", required=True, help="data_class of the context")
        sp.add_argument("--context", action="append", metavar="KEY=VALUE", help="extra pairs")
        sp.add_argument("-i", "--input", help="input file (default stdin)")
        sp.add_argument("-o", "--output", help="output file (default stdout)")

    def with_threads(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--threads",
            type=_thread_count,
            default=1,
            help="threads sealing or opening the segments of a stream in parallel (1..64; "
            "default 1: a second core is already busy writing)",
        )

    enc = sub.add_parser("encrypt", help="encrypt a file or stdin (any size, as a stream)")
    with_context(enc)
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
    with_threads(enc)
    enc.set_defaults(func=cmd_encrypt)
    dec = sub.add_parser("decrypt", help="decrypt a stream or an envelope from a file or stdin")
    with_context(dec)
    dec.add_argument(
        "--range",
        metavar="START:END",
        help="decrypt only the plaintext bytes START..END-1 (a stream opens only their segments)",
    )
    dec.add_argument(
        "--mode",
        type=_file_mode,
        default=FILE_MODE,
        metavar="OCTAL",
        help="permission bits of an output file (default 0600, also when it replaces a file "
        "with a wider mode)",
    )
    with_threads(dec)
    dec.set_defaults(func=cmd_decrypt)

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
    keys.set_defaults(func=cmd_keys)
    sub.add_parser("status", help="provider health, versions, cache").set_defaults(func=cmd_status)
    for ext in _EXTENSIONS:
        # Front doors with optional dependencies add their own subcommands (serve, token,
        # audit, db, verify); each module imports its heavy dependencies only when run, and a
        # command whose extra is missing says which one to install.
        missing = {
            name: extra
            for name, (extra, modules) in ext.requires.items()
            if _missing_extra(extra, modules) is not None
        }
        module = importlib.import_module(ext.module)
        make_config = _initialized_config if ext.needs_init else _config
        module.register(_GatedSubparsers(sub, missing), _service, make_config)
    return p


#: Exit codes besides 0 and 1 (a check failed, which the commands return themselves): a
#: usage or typed error, an outage a later run may not meet, interrupted (128 + SIGINT, as a
#: shell reports it). The README's "Exit codes" lists them for scripts and schedulers.
EXIT_ERROR = 2
EXIT_RETRY_LATER = 3
EXIT_INTERRUPTED = 130

#: errno values that only a write reports: a stray OSError carrying one is an output error.
_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EPIPE, errno.ETXTBSY}
)


def _exit_code(exc: GreenlangCryptoError) -> int:
    """3 when the same command may succeed later (a dependency is down), else 2."""
    if isinstance(exc, UnavailableError | KmsUnavailableError | AuditSinkUnavailableError):
        # A sink that is up but refuses the values is no outage: rerunning cannot help.
        # Looked up only when loaded: if the audit package never ran, the error is not its.
        base = sys.modules.get("greenlang_crypto.audit.sinks.base")
        rejected = getattr(base, "AuditRecordRejectedError", None)
        if rejected is not None and isinstance(exc, rejected):
            return EXIT_ERROR
        return EXIT_RETRY_LATER
    return EXIT_ERROR


def _one_line(text: str) -> str:
    # A message from a lower layer may span lines; the CLI promises one line per error.
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _fail(message: str, code: int) -> int:
    print(f"error: {_one_line(message)}", file=sys.stderr)
    _settle_stdout()
    return code


def _report(exc: GreenlangCryptoError) -> int:
    # Typed errors carry no secrets by construction; print the class and message only (the
    # chained cause, a driver's own text, is never printed).
    text = _one_line(str(exc))
    return _fail(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, _exit_code(exc))


def _settle_stdout() -> None:
    """Points a broken stdout at the null device, so the exit flush adds no second message.

    A closed pipe or a full disk behind stdout would otherwise make the interpreter print
    its own "Exception ignored" lines after ours.
    """
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def _stray_os_error(exc: OSError) -> int:
    """The line and exit code for an OSError that no helper typed.

    An output error when only a write fails so, an outage when a connection failed, else a
    usage error naming the file.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
    error: GreenlangCryptoError
    if isinstance(exc, BrokenPipeError) or exc.errno in _WRITE_ERRNOS:
        error = OutputError(f"cannot write {where}{reason}")
    elif isinstance(exc, ConnectionError | TimeoutError):
        # Refused, reset or timed out: a service the command needs is down right now.
        error = UnavailableError(f"a service is unreachable ({type(exc).__name__}); retry later")
    else:
        return _fail(f"{where}{reason}", EXIT_ERROR)
    error.__cause__ = exc
    return _report(error)


class _OneLineWarnings(logging.Handler):
    """Log records as ``warning: ...`` lines on the current stderr, without tracebacks.

    The command's own failure is the one ``error:`` line main() prints; what the library
    logs on the way (an audit sink down at start, say) stays a single line beside it. With
    ``--debug`` a record's traceback follows its line.
    """

    def __init__(self, level: int, debug: bool = False) -> None:
        super().__init__(level)
        self.debug = debug

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"warning: {_one_line(record.getMessage())}", file=sys.stderr)
            if self.debug and record.exc_info:
                traceback.print_exception(*record.exc_info, file=sys.stderr)
        except Exception:  # a log line must never be what fails the command
            self.handleError(record)


def _cli_logging(command: str | None, debug: bool = False) -> None:
    """Sets up logging for a one-shot command, unless the process already has its own.

    ``serve`` is left to uvicorn's configuration: a server's logs belong to its operator.
    The database drivers' own retries (a pool reconnecting, each attempt a multi-line
    warning) are silenced: their outcome is the typed error the command reports.
    """
    root = logging.getLogger()
    if command == "serve" or root.handlers:
        return
    root.addHandler(_OneLineWarnings(logging.WARNING, debug))
    for name in ("psycopg", "psycopg_pool", "psycopg.pool"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _database_outage(exc: Exception) -> GreenlangCryptoError | None:
    """The typed error for a raw database error that reached the CLI, if it is an outage.

    The stores type their own failures; this is the backstop for one that slipped through
    (a connection pool timing out, a SQLite file locked past its timeout). The drivers are
    looked up only when loaded: a driver never imported cannot have raised, and psycopg and
    SQLAlchemy are optional.
    """
    for module, make in (
        ("psycopg", KeyStoreUnavailableError),
        ("sqlite3", KeyStoreUnavailableError),
        ("sqlalchemy.exc", UnavailableError),
    ):
        cls = getattr(sys.modules.get(module), "OperationalError", None)
        if isinstance(cls, type) and isinstance(exc, cls):
            error: GreenlangCryptoError = make(
                f"the database is unreachable or busy ({type(exc).__name__}); retry later"
            )
            error.__cause__ = exc
            return error
    return None


def _checkpoint_files(args: argparse.Namespace) -> None:
    """Reads ``audit verify --checkpoint-file`` files with the anchors' own reader.

    Each file may be a copy of a file anchor (JSON lines), an object the S3 anchor put, or a
    shipped log holding the stdout or syslog anchor's lines; its checkpoints join the
    ``--checkpoint`` ones. A file that yields none is an error: a copy of the wrong file, or
    one emptied, must not let a cut log pass as verified.

    Raises:
        _UsageError: A file is unreadable, holds a malformed checkpoint, or holds none.
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
            raise _unreadable(path, exc) from exc
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        if not found:
            raise _UsageError(
                f"--checkpoint-file {path} holds no checkpoint (expected an anchor file, an "
                "S3 anchor object or a log with glc-audit-checkpoint lines)"
            )
        given += [cp.to_json() for cp in found]
    args.checkpoint = given
    args.checkpoint_file = []


@contextlib.contextmanager
def _quiet_hooks(debug: bool) -> Iterator[None]:
    """Without ``--debug``, errors the interpreter reports itself stay one line too.

    An exception ending a thread, or raised where nobody can catch it (a finalizer), is
    printed with its traceback by default; a traceback can quote a driver's message.
    """
    if debug:
        yield
        return
    saved_thread, saved_unraisable = threading.excepthook, sys.unraisablehook

    def thread_hook(hook_args: Any) -> None:
        if hook_args.exc_type is SystemExit:
            return
        name = getattr(hook_args.thread, "name", "a thread")
        print(f"warning: {hook_args.exc_type.__name__} in {name}", file=sys.stderr)

    def unraisable_hook(hook_args: Any) -> None:
        print(f"warning: {hook_args.exc_type.__name__} ignored", file=sys.stderr)

    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
    try:
        yield
    finally:
        threading.excepthook, sys.unraisablehook = saved_thread, saved_unraisable


def _print_traceback(debug: bool) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``greenlang-crypto`` command; returns the exit code.

    Every failure is one ``error: ...`` line on stderr, never a traceback unless ``--debug``
    was given: 2 for a usage or typed error (or an unexpected one), 3 for an outage worth
    retrying later, 130 when interrupted.
    """
    # Known before parsing, for a failure while the parser is built.
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    with _quiet_hooks(debug):
        return _main(argv, debug)


def _main(argv: Sequence[str] | None, debug: bool) -> int:
    try:
        parser = build_parser()
        # A command whose extra is missing accepts whatever follows it, so that the user
        # learns which extra to install rather than which of its arguments were wrong.
        args, unknown = parser.parse_known_args(argv)
        debug = bool(getattr(args, "debug", debug))
        if unknown and not getattr(args, "accepts_any_arguments", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        _cli_logging(args.command, debug)
        _checkpoint_files(args)
        return int(args.func(args))
    except KeyboardInterrupt:
        _print_traceback(debug)
        return _fail("interrupted", EXIT_INTERRUPTED)
    except GreenlangCryptoError as exc:
        _print_traceback(debug)
        return _report(exc)
    except _UsageError as exc:
        _print_traceback(debug)
        return _fail(str(exc), EXIT_ERROR)
    except OSError as exc:
        _print_traceback(debug)
        return _stray_os_error(exc)
    except Exception as exc:
        _print_traceback(debug)
        outage = _database_outage(exc)
        if outage is not None:
            return _report(outage)
        # A bug, or a database refusing a statement. Its message may quote anything it was
        # handed (a driver's DETAIL shows the failing row), so only the types are named;
        # --debug prints the traceback a report needs.
        orig = getattr(exc, "orig", None)
        driver = f" ({type(orig).__name__})" if isinstance(orig, BaseException) else ""
        hint = "" if debug else "; rerun with --debug for the traceback"
        return _fail(f"unexpected {type(exc).__name__}{driver}{hint}", EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
