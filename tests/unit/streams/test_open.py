"""Decryption of streams: the header, the reader (ranges, seeks, failures) and decrypt_to."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from greenlang_crypto._core import STREAM_FIXED_LEN
from greenlang_crypto.exceptions import DecryptionError, InvalidArgumentError, InvalidEnvelopeError
from greenlang_crypto.streams import _io, _open, _seal
from tests.unit.streams._keys import SEG, StreamKeys


class Pipe(io.RawIOBase):
    """Not seekable, short reads; counts the bytes it gave."""

    def __init__(self, blob: bytes) -> None:
        self._src = io.BytesIO(blob)
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._src.readinto(memoryview(buffer)[:5000])
        self.given += n
        return n


class Counting(io.BytesIO):
    """Seekable; counts the bytes read."""

    given = 0

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        self.given += n
        return n


def sealed(keys: StreamKeys, pt: bytes) -> bytes:
    sink = io.BytesIO()
    _seal.encrypt_to(keys.encryptor(), io.BytesIO(pt), sink, max_bytes=1 << 30)
    return sink.getvalue()


def open_reader(keys: StreamKeys, src: Any, **kw: Any) -> _open.DecryptingReader:
    header = _open.read_header(_io.as_reader(src))
    return _open.DecryptingReader(src, keys.decryptor(header), **kw)


def test_read_header_refuses_short_or_foreign_input(keys: StreamKeys) -> None:
    blob = sealed(keys, b"x")
    header = keys.encryptor().header
    assert _open.read_header(io.BytesIO(blob)) == blob[: len(header)]
    with pytest.raises(InvalidEnvelopeError, match="truncated"):
        _open.read_header(io.BytesIO(blob[: STREAM_FIXED_LEN - 1]))
    with pytest.raises(InvalidEnvelopeError, match="truncated"):
        _open.read_header(io.BytesIO(blob[: len(header) - 1]))
    with pytest.raises(InvalidEnvelopeError):
        _open.read_header(io.BytesIO(b"\x00" * 64))


def test_a_seekable_source_reads_any_range(keys: StreamKeys, data: Callable[[int], bytes]) -> None:
    pt = data(5 * SEG + 3)
    src = Counting(sealed(keys, pt))
    with open_reader(keys, src) as reader:
        assert reader.seekable()
        assert reader.size == len(pt)
        reader.seek(3 * SEG + 10)
        before = src.given
        assert reader.read(100) == pt[3 * SEG + 10 : 3 * SEG + 110]
        # One segment and its tag, nothing else.
        assert src.given - before == SEG + 16
        assert reader.seek(-4, 2) == len(pt) - 4
        assert reader.read() == pt[-4:]
        assert reader.tell() == len(pt)


def test_seek_arguments_are_checked(keys: StreamKeys) -> None:
    with open_reader(keys, io.BytesIO(sealed(keys, b"abc"))) as reader:
        with pytest.raises(ValueError, match="negative"):
            reader.seek(-1)
        with pytest.raises(ValueError, match="whence"):
            reader.seek(0, 7)
    with open_reader(keys, Pipe(sealed(keys, b"abc"))) as piped:
        assert piped.size is None
        with pytest.raises(io.UnsupportedOperation):
            piped.seek(0)


def test_a_pipe_reads_in_order(keys: StreamKeys, data: Callable[[int], bytes]) -> None:
    pt = data(4 * SEG + 9)
    with open_reader(keys, Pipe(sealed(keys, pt))) as reader:
        assert not reader.seekable()
        assert reader.read(SEG + 1) == pt[: SEG + 1]
        assert reader.readall() == pt[SEG + 1 :]


def test_a_tampered_segment_fails_and_keeps_failing(
    keys: StreamKeys, data: Callable[[int], bytes]
) -> None:
    pt = data(3 * SEG)
    blob = bytearray(sealed(keys, pt))
    blob[-20] ^= 1
    failures: list[DecryptionError] = []
    closes: list[int] = []
    reader = open_reader(
        keys, io.BytesIO(bytes(blob)), on_failure=failures.append, on_close=closes.append
    )
    with pytest.raises(DecryptionError):
        reader.read()
    with pytest.raises(DecryptionError):
        reader.read(1)
    reader.close()
    assert len(failures) == 1
    assert closes == []


def test_a_cut_stream_fails_at_its_apparent_end(
    keys: StreamKeys, data: Callable[[int], bytes]
) -> None:
    pt = data(3 * SEG)
    blob = sealed(keys, pt)
    cut = blob[: len(blob) - (SEG + 16)]
    with open_reader(keys, Pipe(cut)) as reader, pytest.raises(DecryptionError):
        reader.readall()


def test_verify_size_proves_the_length_before_reporting_it(
    keys: StreamKeys, data: Callable[[int], bytes]
) -> None:
    pt = data(3 * SEG + 7)
    blob = sealed(keys, pt)
    with open_reader(keys, io.BytesIO(blob)) as reader:
        assert reader.verify_size() == len(pt)
        reader.seek(SEG)
        assert reader.read(10) == pt[SEG : SEG + 10]
    # Cut at a segment boundary, or inside one: the apparent size is shorter, and unproven.
    for cut in (blob[: len(blob) - (7 + 16)], blob[: len(blob) - 100]):
        with open_reader(keys, io.BytesIO(cut)) as reader:
            assert reader.size is not None and reader.size < len(pt)
            with pytest.raises(DecryptionError):
                reader.verify_size()
            with pytest.raises(DecryptionError):
                reader.read(1)  # the failure sticks
    with open_reader(keys, Pipe(blob)) as reader, pytest.raises(io.UnsupportedOperation):
        reader.verify_size()


def test_close_reports_the_bytes_and_may_close_the_source(
    keys: StreamKeys, data: Callable[[int], bytes]
) -> None:
    src = io.BytesIO(sealed(keys, data(100)))
    counts: list[int] = []
    reader = open_reader(keys, src, on_close=counts.append, close_source=True)
    assert len(reader.read(60)) == 60
    reader.close()
    reader.close()
    assert counts == [60]
    assert src.closed
    with pytest.raises(ValueError, match="closed file"):
        reader.tell()


def test_the_reader_is_read_only(keys: StreamKeys) -> None:
    with open_reader(keys, io.BytesIO(sealed(keys, b"abc"))) as reader:
        assert not reader.writable()
        with pytest.raises(io.UnsupportedOperation):
            reader.write(b"x")


@pytest.mark.parametrize("seekable", [True, False])
@pytest.mark.parametrize(("start", "end"), [(0, None), (SEG - 1, 2 * SEG + 1), (10, 10), (7, None)])
def test_decrypt_to_copies_the_range(
    keys: StreamKeys,
    data: Callable[[int], bytes],
    monkeypatch: pytest.MonkeyPatch,
    seekable: bool,
    start: int,
    end: int | None,
) -> None:
    monkeypatch.setattr(_io, "RUN_BYTES", 2 * SEG)
    pt = data(6 * SEG + 5)
    blob = sealed(keys, pt)
    src: Any = io.BytesIO(blob) if seekable else Pipe(blob)
    sink = io.BytesIO()
    seen: list[int] = []
    with open_reader(keys, src) as reader:
        n = _open.decrypt_to(reader, sink, start=start, end=end, progress=seen.append)
    assert sink.getvalue() == pt[start:end]
    assert n == sum(seen) == len(pt[start:end])


def test_decrypt_to_checks_the_range(keys: StreamKeys) -> None:
    with open_reader(keys, io.BytesIO(sealed(keys, b"abc"))) as reader:
        with pytest.raises(InvalidArgumentError, match="range"):
            _open.decrypt_to(reader, io.BytesIO(), start=-1)
        with pytest.raises(InvalidArgumentError, match="range"):
            _open.decrypt_to(reader, io.BytesIO(), start=5, end=4)


def test_decrypt_to_writes_only_runs_that_authenticated(
    keys: StreamKeys, data: Callable[[int], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_io, "RUN_BYTES", 2 * SEG)
    pt = data(6 * SEG)
    blob = bytearray(sealed(keys, pt))
    header_len = len(keys.encryptor().header)
    blob[header_len + 5 * (SEG + 16) - 1] ^= 1  # the tag of the fifth segment, in run three
    sink = io.BytesIO()
    with open_reader(keys, Pipe(bytes(blob))) as reader, pytest.raises(DecryptionError):
        _open.decrypt_to(reader, sink)
    out = sink.getvalue()
    # The writer may or may not have caught up with the runs before the failure; it never
    # gets any byte of the failed run.
    assert len(out) in (0, 2 * SEG, 4 * SEG)
    assert out == pt[: len(out)]
