"""The writer thread of streams: order, buffer reuse, progress, and errors from either side."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from greenlang_crypto.streams import _pipeline


def runs(count: int, size: int = 64) -> Iterator[tuple[memoryview, int]]:
    """``count`` views rotating over two buffers, run i filled with byte i."""
    bufs = [bytearray(size), bytearray(size)]
    for i in range(count):
        buf = bufs[i % 2]
        buf[:] = bytes([i % 256]) * size
        yield memoryview(buf), size


class SlowSink(io.RawIOBase):
    """Writes lag behind, so a buffer reused too early would show in the output."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.out = bytearray()
        self.writes = 0
        self._fail_at = fail_at

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes += 1
        if self._fail_at is not None and self.writes >= self._fail_at:
            raise OSError("disk full")
        time.sleep(0.002)
        self.out += bytes(data)
        return len(data)


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    made: list[Any] = []
    real = _pipeline._Writer

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(_pipeline, "_Writer", Counted)
    return made


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "glc-stream-writer"]


def test_a_single_run_is_written_on_the_callers_thread(writers: list[Any]) -> None:
    sink = SlowSink()
    seen: list[int] = []
    _pipeline._write_runs(runs(1), sink, seen.append)
    assert bytes(sink.out) == bytes(64)
    assert seen == [64]
    assert writers == []


def test_nothing_to_write_writes_nothing(writers: list[Any]) -> None:
    sink = SlowSink()
    _pipeline._write_runs(iter([]), sink, None)
    assert sink.writes == 0
    assert writers == []


def test_many_runs_keep_their_order_and_buffers(writers: list[Any]) -> None:
    sink = SlowSink()
    seen: list[int] = []
    _pipeline._write_runs(runs(40), sink, seen.append)
    assert bytes(sink.out) == b"".join(bytes([i]) * 64 for i in range(40))
    assert sum(seen) == 40 * 64
    assert len(writers) == 1
    assert writer_threads() == []


def test_an_error_of_the_destination_reaches_the_caller() -> None:
    sink = SlowSink(fail_at=3)
    with pytest.raises(OSError, match="disk full"):
        _pipeline._write_runs(runs(20), sink, None)
    assert writer_threads() == []
    assert len(sink.out) == 2 * 64


def test_an_error_of_the_source_stops_the_writer() -> None:
    def failing() -> Iterator[tuple[memoryview, int]]:
        yield from runs(3)
        raise ValueError("source broke")

    sink = SlowSink()
    with pytest.raises(ValueError, match="source broke"):
        _pipeline._write_runs(failing(), sink, None)
    assert writer_threads() == []


def test_writer_abort_drops_what_is_queued() -> None:
    gate = threading.Event()
    entered = threading.Event()

    class Held(io.RawIOBase):
        def __init__(self) -> None:
            self.out = bytearray()

        def write(self, data: Any) -> int:
            entered.set()
            gate.wait(5)
            self.out += bytes(data)
            return len(data)

    sink = Held()
    writer = _pipeline._Writer(sink, None)
    for i in range(3):
        writer.submit(memoryview(bytes([i]) * 4), 4)
    assert entered.wait(5)
    threading.Timer(0.05, gate.set).start()
    writer.abort()
    # The write in progress completes; the two queued behind it never happen.
    assert bytes(sink.out) == bytes(4)
    assert writer_threads() == []
