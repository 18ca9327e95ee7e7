"""A stream pulled as it is encrypted (``EncryptingReader``, used by the S3 uploads): the
service pushes into a file object on a worker thread while a consumer reads."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto.exceptions import KmsUnavailableError, PayloadTooLargeError
from greenlang_crypto.streams import EncryptingReader
from tests.unit.test_streams import AD, CTX, SEG, OneWay, data, make


def test_pulled_stream_round_trips_and_is_counted_once(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    pt = data(3 * SEG + 9)

    def produce(dst: Any) -> int:
        return svc.encrypt_stream(OneWay(pt), dst, CTX, AD, segment_size=SEG)

    reader = EncryptingReader(produce)
    assert repr(reader) == "<EncryptingReader>" and reader.readable()
    assert reader.header[:1] == b"\xfb"
    pieces = []
    while chunk := reader.read(7000):
        pieces.append(chunk)
    assert reader.read(10) == b""
    reader.close()
    ct = b"".join(pieces)
    assert ct.startswith(reader.header)
    with svc.open_decrypting(io.BytesIO(ct), CTX, AD) as r:
        assert r.read() == pt
    assert svc.operation_counts()["encrypt"]["documents"] == (1, len(pt))
    with pytest.raises(ValueError):
        reader.read(1)

    def again_produce(dst: Any) -> int:
        return svc.encrypt_stream(io.BytesIO(pt), dst, CTX, segment_size=SEG)

    with EncryptingReader(again_produce) as again:
        assert len(again.readall()) == len(ct)
    svc.close()


def test_producer_errors_reach_the_reader(tmp_path: Path) -> None:
    svc, _ = make(tmp_path, stream_max_bytes=5 * SEG)
    big = tmp_path / "big"
    big.write_bytes(data(5 * SEG + 1))
    with big.open("rb") as f, pytest.raises(PayloadTooLargeError):
        # A regular file over the limit: refused before the header, so by the constructor.
        EncryptingReader(lambda dst: svc.encrypt_stream(f, dst, CTX))
    reader = EncryptingReader(lambda dst: svc.encrypt_stream(OneWay(data(5 * SEG + 1)), dst, CTX))
    with pytest.raises(PayloadTooLargeError):
        reader.readall()
    reader.close()

    def fails(dst: Any) -> None:
        dst.write(b"\xfbheader")
        raise KmsUnavailableError("injected")

    with EncryptingReader(fails) as r, pytest.raises(KmsUnavailableError):
        r.read(100)
    with pytest.raises(ValueError):
        EncryptingReader(lambda dst: None)
    svc.close()


def test_closing_early_stops_the_producer(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    stopped = threading.Event()

    def produce(dst: Any) -> None:
        try:
            svc.encrypt_stream(io.BytesIO(data(8 * SEG)), dst, CTX, segment_size=SEG)
        except BrokenPipeError:
            stopped.set()
            raise

    reader = EncryptingReader(produce)
    assert len(reader.read(100)) == 100
    reader.close()  # joins the producer thread
    assert stopped.is_set()
    svc.close()
