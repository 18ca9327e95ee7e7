"""``greenlang-crypto encrypt`` and ``decrypt``: streams of any size, or single envelopes."""

from __future__ import annotations

import argparse
from typing import Any

from greenlang_crypto._core import STREAM_MAGIC
from greenlang_crypto._files import regular_file_size
from greenlang_crypto.cli._common import context_of, one_shot
from greenlang_crypto.cli._io import (
    Prefixed,
    UsageError,
    byte_progress,
    open_input,
    open_output,
    read_input,
    write_output,
)
from greenlang_crypto.exceptions import PayloadTooLargeError

__all__ = ["cmd_decrypt", "cmd_encrypt", "file_mode", "parse_range", "thread_count"]


def thread_count(text: str) -> int:
    """``--threads``: an int in 1..64 (argparse reports the error as a usage error)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError("expected 1..64")
    return n


def file_mode(text: str) -> int:
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


def parse_range(text: str | None) -> tuple[int, int | None]:
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
        raise UsageError(f"--range expects START:END in bytes, got {text!r}") from None
    if start < 0 or (end is not None and end < start):
        raise UsageError("--range needs 0 <= START <= END")
    return start, end


def cmd_encrypt(args: argparse.Namespace) -> int:
    """Encrypts a file or stdin to a file or stdout: a stream, in constant memory."""
    svc = one_shot(args).service
    if args.envelope:
        data = read_input(args.input, svc.config.max_plaintext_bytes)
        env = svc.encrypt(data, context_of(args), key_reference=args.key_reference)
        write_output(args.output, env)
        return 0
    ctx = context_of(args)
    with (
        open_input(args.input) as src,
        open_output(args.output) as dst,
        byte_progress(regular_file_size(src), "encrypt") as progress,
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
    svc = one_shot(args).service
    ctx = context_of(args)
    start, end = parse_range(args.range)
    with open_input(args.input) as src:
        seekable = src.seekable()
        head = src.read(1) or b""
        if seekable:
            src.seek(0)
        if head[:1] == bytes([STREAM_MAGIC]):
            source: Any = src if seekable else Prefixed(head, src)
            with open_output(args.output, args.mode) as dst:
                size = regular_file_size(src) if end is None else end - start
                with byte_progress(size, "decrypt") as progress:
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
    write_output(args.output, plaintext[start:end], args.mode)
    return 0
