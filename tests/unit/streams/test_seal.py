"""Encryption of streams: runs sealed in reused buffers, the size limit, progress, files."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from greenlang_crypto.exceptions import PayloadTooLargeError
from greenlang_crypto.streams import _io, _seal
from greenlang_crypto.streams._open import DecryptingReader, read_header
from tests.unit.streams._keys import SEG, StreamKeys


def opened(keys: StreamKeys, blob: bytes) -> bytes:
    src = io.BytesIO(blob)
    header = read_header(src)
    with DecryptingReader(src, keys.decryptor(header)) as reader:
        return reader.readall()


@pytest.mark.parametrize("n", [0, 1, SEG, 2 * SEG + 7])
def test_sealed_runs_start_with_the_header_and_round_trip(
    keys: StreamKeys, data: Callable[[int], bytes], n: int
) -> None:
    enc = keys.encryptor()
    pt = data(n)
    done: list[int] = []
    progress: list[int] = []
    views = _seal.sealed_runs(
        enc, iter([pt]), max_bytes=1 << 30, progress=progress.append, on_done=done.append
    )
    parts = [bytes(v) for v in views]
    assert parts[0] == enc.header
    assert opened(keys, b"".join(parts)) == pt
    assert done == [n]
    assert sum(progress) == n
    assert enc.finished


def test_runs_follow_the_run_size(
    keys: StreamKeys, data: Callable[[int], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_io, "RUN_BYTES", 2 * SEG)
    pt = data(5 * SEG + 1)
    views = list(_seal.sealed_runs(keys.encryptor(), io.BytesIO(pt), max_bytes=1 << 30))
    # The header, two runs of two segments, then the final run (one segment and one byte).
    assert len(views) == 1 + 3


def test_more_than_max_bytes_is_refused(keys: StreamKeys, data: Callable[[int], bytes]) -> None:
    with pytest.raises(PayloadTooLargeError, match="maximum of 100 bytes"):
        list(_seal.sealed_runs(keys.encryptor(), iter([data(101)]), max_bytes=100))
    sink = io.BytesIO()
    with pytest.raises(PayloadTooLargeError):
        _seal.encrypt_to(keys.encryptor(), io.BytesIO(data(3 * SEG)), sink, max_bytes=SEG)


def test_exactly_max_bytes_is_accepted(keys: StreamKeys, data: Callable[[int], bytes]) -> None:
    pt = data(SEG)
    sink = io.BytesIO()
    assert _seal.encrypt_to(keys.encryptor(), io.BytesIO(pt), sink, max_bytes=SEG) == SEG
    assert opened(keys, sink.getvalue()) == pt


@pytest.mark.parametrize("threads", [1, 3])
def test_encrypt_to_from_a_regular_file_and_from_a_pipe(
    keys: StreamKeys,
    data: Callable[[int], bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
) -> None:
    monkeypatch.setattr(_io, "RUN_BYTES", 2 * SEG)
    pt = data(7 * SEG + 11)
    path = tmp_path / "plain"
    path.write_bytes(pt)
    seen: list[int] = []
    with open(path, "rb", buffering=0) as f:
        sink = io.BytesIO()
        n = _seal.encrypt_to(
            keys.encryptor(), f, sink, max_bytes=1 << 30, threads=threads, progress=seen.append
        )
    assert n == len(pt) == sum(seen)
    assert opened(keys, sink.getvalue()) == pt
    r, w = os.pipe()

    def feed() -> None:
        with open(w, "wb") as wf:
            wf.write(pt)

    feeder = threading.Thread(target=feed)
    feeder.start()
    with open(r, "rb", buffering=0) as pipe:
        sink2 = io.BytesIO()
        assert _seal.encrypt_to(keys.encryptor(), pipe, sink2, max_bytes=1 << 30) == len(pt)
    feeder.join()
    assert opened(keys, sink2.getvalue()) == pt


def test_a_file_that_shrinks_while_read_still_makes_a_valid_stream(
    keys: StreamKeys, data: Callable[[int], bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_io, "RUN_BYTES", 2 * SEG)
    path = tmp_path / "plain"
    pt = data(6 * SEG)
    path.write_bytes(pt)
    with open(path, "rb", buffering=0) as f:
        runs = _seal.sealed_runs(keys.encryptor(), f, max_bytes=1 << 30)
        parts = [bytes(next(runs)), bytes(next(runs))]
        os.truncate(path, 2 * SEG)
        parts += [bytes(v) for v in runs]
    assert opened(keys, b"".join(parts)) == pt[: 2 * SEG]
