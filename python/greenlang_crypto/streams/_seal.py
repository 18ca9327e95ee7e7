"""Encryption of streams: plaintext runs sealed in reused buffers and written in order."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from greenlang_crypto._core import StreamEncryptor, wipe_buffer
from greenlang_crypto._files import regular_file_size
from greenlang_crypto.exceptions import PayloadTooLargeError
from greenlang_crypto.streams import _io
from greenlang_crypto.streams._io import (
    TAG_LEN,
    _fill,
    _Writable,
    _write_all,
    as_reader,
)
from greenlang_crypto.streams._pipeline import _write_runs


def sealed_runs(
    encryptor: StreamEncryptor,
    src: object,
    *,
    max_bytes: int,
    threads: int = 1,
    progress: Callable[[int], object] | None = None,
    on_done: Callable[[int], object] | None = None,
) -> Iterator[memoryview]:
    """The stream of ``src`` sealed by ``encryptor``: the header, then one view per run.

    Each view is valid until the next one is requested (the buffers are reused). One
    plaintext buffer (a run and one byte more) and one output buffer: a run is sealed only
    once one byte beyond it shows whether more follows, since the final segment is sealed
    differently (its nonce flag); that byte then starts the next run. ``on_done`` gets the
    plaintext length once the final segment is out.

    Raises:
        PayloadTooLargeError: More than ``max_bytes`` of plaintext (what was produced so far is
            an incomplete stream that does not decrypt).
    """
    yield memoryview(encryptor.header)
    for view, have in _seal_runs(
        encryptor, src, max_bytes=max_bytes, threads=threads, buffers=1, on_done=on_done
    ):
        yield view
        if progress is not None:
            progress(have)


def _seal_runs(
    encryptor: StreamEncryptor,
    src: object,
    *,
    max_bytes: int,
    threads: int,
    buffers: int,
    on_done: Callable[[int], object] | None,
) -> Iterator[tuple[memoryview, int]]:
    """The sealed runs of ``src`` (no header), each with its plaintext length.

    The runs rotate over ``buffers`` output buffers, so a view stays valid until ``buffers``
    more have been requested; a second buffer is allocated only when a second run comes.
    """
    reader = as_reader(src)
    seg = encryptor.segment_size
    # A run holds at least one segment per sealing thread, or the extra threads idle.
    run = max(seg * max(1, threads), _io.RUN_BYTES - _io.RUN_BYTES % seg)
    buf = bytearray(run + 1)
    view = memoryview(buf)
    out_len = encryptor.sealed_len(run, False) + TAG_LEN
    outs = [memoryview(bytearray(out_len))]
    # A regular file says how much follows, so most runs need no look-ahead byte and reads
    # stay aligned to whole runs (which the page cache and tmpfs copy fastest). Should the file
    # shrink meanwhile, the next run is an empty final segment, which is valid.
    expected = regular_file_size(src)
    ahead = 0
    total = 0
    turn = 0
    try:
        while True:
            carry = False
            if expected is not None and total + run < expected:
                have = ahead + _fill(reader, view[ahead:run])
                last = have < run
            else:
                got = ahead + _fill(reader, view[ahead:])
                last = got <= run
                have = got if last else run
                carry = not last
            total += have
            if total > max_bytes:
                raise PayloadTooLargeError(f"stream exceeds the maximum of {max_bytes} bytes")
            n = encryptor.sealed_len(have, last)
            slot = turn % buffers
            if slot == len(outs):
                outs.append(memoryview(bytearray(out_len)))
            out_view = outs[slot]
            encryptor.seal_into(view[:have], out_view[:n], last, threads)
            turn += 1
            yield out_view[:n], have
            if last:
                if on_done is not None:
                    on_done(total)
                return
            if carry:
                buf[0] = buf[run]
            ahead = int(carry)
    finally:
        # The last run's plaintext would otherwise stay in freed memory.
        wipe_buffer(buf)


def encrypt_to(
    encryptor: StreamEncryptor,
    src: object,
    dst: _Writable,
    *,
    max_bytes: int,
    threads: int = 1,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Writes the stream of ``src`` sealed by ``encryptor`` to ``dst``; returns plaintext bytes.

    A stream of more than one run is written by a second thread while the next run is read
    and sealed (see :class:`_Writer`); the writes stay in order and in the caller's memory
    budget (two output runs), and an error of ``dst`` or ``src`` stops both threads.

    Raises:
        PayloadTooLargeError: As :func:`sealed_runs`.
    """
    total = [0]
    _write_all(dst, memoryview(encryptor.header))
    runs = _seal_runs(
        encryptor,
        src,
        max_bytes=max_bytes,
        threads=threads,
        buffers=2,
        on_done=lambda n: total.__setitem__(0, n),
    )
    _write_runs(runs, dst, progress)
    return total[0]
