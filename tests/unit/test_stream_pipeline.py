"""The file-to-file pipeline of streams: a writer thread writes run N while run N+1 is sealed.

Round trips on both sides of the point where the pipeline starts (more than one run), that it
starts only there, that writes stay in order and never see a buffer being reused, that an
error of the destination or of the source reaches the caller and leaves no thread behind, and
that decryption still writes only authenticated plaintext and fails on a cut stream.
"""

from __future__ import annotations

import io
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext, streams
from greenlang_crypto._core import STREAM_MIN_SEGMENT, parse_stream_header
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import DecryptionError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

SEG = STREAM_MIN_SEGMENT
CTX = EncryptionContext(tenant_id="t1", data_class="documents")
AD = b"bucket/key"
#: Runs of two segments in most tests, so that many runs stay small.
RUN = 2 * SEG


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptionService]:
    path = tmp_path_factory.mktemp("pipeline")
    LocalKeyProvider(path).create_master_key()
    service = EncryptionService(EncryptionServiceConfig(data_dir=path, keyring_refresh_seconds=0))
    yield service
    service.close()


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "RUN_BYTES", RUN)


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The writer threads' owners made during the test, in order."""
    made: list[Any] = []
    real = streams._Writer

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(streams, "_Writer", Counted)
    return made


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() == before
    assert not [t for t in threading.enumerate() if t.name == "glc-stream-writer"]


def data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class Pipe(io.RawIOBase):
    """A source that cannot seek and has no size, with short reads; counts what it gives."""

    def __init__(self, blob: bytes, fail_after: int | None = None) -> None:
        self._blob = memoryview(blob)
        self._rng = random.Random(len(blob))
        self._fail_after = fail_after
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._fail_after is not None and self.given >= self._fail_after:
            raise OSError("source failed")
        n = min(len(b), len(self._blob), self._rng.randint(1, 3 * SEG))
        b[:n] = self._blob[:n]
        self._blob = self._blob[n:]
        self.given += n
        return n


class SlowSink(io.RawIOBase):
    """A destination that takes its time and copies each buffer only after the delay, so a
    buffer reused while its write is pending shows as corrupt output; it can fail on a given
    write, and it records the thread of every write."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.out = bytearray()
        self.delay = delay
        self.fail_on = fail_on
        self.writes = 0
        self.threads: set[str] = set()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.writes += 1
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and self.writes >= self.fail_on:
            raise OSError("destination failed")
        view = memoryview(b).cast("B")
        if self.delay:
            time.sleep(self.delay)
        self.out += view
        return len(view)


def seal(svc: EncryptionService, pt: bytes, src: Any = None, dst: Any = None) -> bytes:
    sink = dst if dst is not None else SlowSink()
    source = src if src is not None else io.BytesIO(pt)
    assert svc.encrypt_stream(source, sink, CTX, AD, segment_size=SEG) == len(pt)
    return bytes(sink.out)


def open_all(svc: EncryptionService, ct: bytes, dst: Any = None) -> bytes:
    sink = dst if dst is not None else SlowSink()
    assert svc.decrypt_stream(io.BytesIO(ct), sink, CTX, AD) == len(sink.out)
    return bytes(sink.out)


# -- round trips and when the pipeline starts ------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, RUN - 1, RUN, RUN + 1, 2 * RUN, 3 * RUN + 7, 9 * RUN])
def test_round_trips_on_both_sides_of_the_threshold(
    svc: EncryptionService, small_runs: None, writers: list[Any], n: int
) -> None:
    pt = data(n, n)
    for source in (io.BytesIO(pt), Pipe(pt), iter([pt[i : i + 999] for i in range(0, n, 999)])):
        writers.clear()
        ct = seal(svc, pt, src=source)
        # Segments in order and complete: the length is exact and the stream opens.
        header = parse_stream_header(ct)
        assert len(ct) == header.header_len + n + 16 * max(1, -(-n // SEG))
        assert len(writers) == (1 if n > RUN else 0)
        writers.clear()
        assert open_all(svc, ct) == pt
        assert len(writers) == (1 if n > RUN else 0)
        with svc.open_decrypting(Pipe(ct), CTX, AD) as reader:
            sink = SlowSink()
            assert streams.decrypt_to(reader, sink) == n
            assert bytes(sink.out) == pt


def test_regular_files_at_the_default_run(svc: EncryptionService, tmp_path: Path) -> None:
    for n in (streams.RUN_BYTES, streams.RUN_BYTES + 1, 3 * streams.RUN_BYTES + 5):
        pt = os.urandom(n)
        (tmp_path / "p").write_bytes(pt)
        assert svc.encrypt_file(tmp_path / "p", tmp_path / "c", CTX, AD) == n
        assert svc.decrypt_file(tmp_path / "c", tmp_path / "o", CTX, AD) == n
        assert (tmp_path / "o").read_bytes() == pt
        assert (tmp_path / "o").stat().st_mode & 0o777 == 0o600


def test_a_slow_destination_sees_every_buffer_before_its_reuse(
    svc: EncryptionService, small_runs: None, writers: list[Any]
) -> None:
    # The caller runs ahead of a slow writer; had it sealed or opened into a buffer still being
    # written, the output would not authenticate or would differ from the plaintext.
    pt = data(12 * RUN + 3, 7)
    sink = SlowSink(delay=0.002)
    ct = seal(svc, pt, dst=sink)
    assert sink.threads == {"MainThread", "glc-stream-writer"}  # the header is written inline
    out = SlowSink(delay=0.002)
    assert open_all(svc, ct, out) == pt
    assert out.threads == {"glc-stream-writer"}


def test_ranges_through_the_pipeline(svc: EncryptionService, small_runs: None) -> None:
    pt = data(7 * RUN + 11, 3)
    ct = seal(svc, pt)
    for start, end in [(0, None), (1, None), (RUN - 1, 3 * RUN + 2), (SEG + 5, SEG + 6)]:
        for source in (io.BytesIO(ct), Pipe(ct)):
            sink = SlowSink(delay=0.0005)
            got = svc.decrypt_stream(source, sink, CTX, AD, start=start, end=end)
            assert bytes(sink.out) == pt[start:end] and got == len(sink.out)


def test_progress_reports_every_byte_on_the_callers_thread(
    svc: EncryptionService, small_runs: None
) -> None:
    pt = data(5 * RUN + 9, 5)
    seen: list[tuple[int, str]] = []

    def progress(n: int) -> None:
        seen.append((n, threading.current_thread().name))

    sink = SlowSink()
    svc.encrypt_stream(io.BytesIO(pt), sink, CTX, AD, segment_size=SEG, progress=progress)
    assert sum(n for n, _ in seen) == len(pt)
    assert {name for _, name in seen} == {"MainThread"}
    seen.clear()
    svc.decrypt_stream(io.BytesIO(bytes(sink.out)), SlowSink(), CTX, AD, progress=progress)
    assert sum(n for n, _ in seen) == len(pt)
    assert {name for _, name in seen} == {"MainThread"}


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_on", [2, 3, 6])
def test_a_failing_destination_stops_encryption(
    svc: EncryptionService, small_runs: None, fail_on: int
) -> None:
    pt = data(40 * RUN, 1)
    src = Pipe(pt)
    with pytest.raises(OSError, match="destination failed"):
        seal(svc, pt, src=src, dst=SlowSink(fail_on=fail_on))
    # The caller stopped reading within a few runs of the failure, not at the end.
    assert src.given < (fail_on + 4) * RUN


@pytest.mark.parametrize("fail_on", [1, 2, 5])
def test_a_failing_destination_stops_decryption(
    svc: EncryptionService, small_runs: None, fail_on: int
) -> None:
    pt = data(40 * RUN, 2)
    ct = seal(svc, pt)
    src = Pipe(ct)
    with pytest.raises(OSError, match="destination failed"):
        svc.decrypt_stream(src, SlowSink(fail_on=fail_on), CTX, AD)
    assert src.given < (fail_on + 4) * (RUN + 32)


def test_a_failing_source_stops_the_writer(svc: EncryptionService, small_runs: None) -> None:
    pt = data(20 * RUN, 4)
    sink = SlowSink(delay=0.001)
    with pytest.raises(OSError, match="source failed"):
        seal(svc, pt, src=Pipe(pt, fail_after=5 * RUN), dst=sink)
    assert len(sink.out) < 6 * (RUN + 32) + 100
    ct = seal(svc, pt)
    out = SlowSink(delay=0.001)
    with pytest.raises(OSError, match="source failed"):
        svc.decrypt_stream(Pipe(ct, fail_after=5 * RUN), out, CTX, AD)
    assert bytes(out.out) == pt[: len(out.out)]


def test_an_interrupt_in_the_writer_reaches_the_caller(
    svc: EncryptionService, small_runs: None
) -> None:
    class Interrupting(SlowSink):
        def write(self, b: Any) -> int:
            if self.writes == 3:
                raise KeyboardInterrupt
            return super().write(b)

    with pytest.raises(KeyboardInterrupt):
        seal(svc, data(10 * RUN), dst=Interrupting())


def cut_and_tampered(ct: bytes, n: int) -> list[tuple[bytes, int]]:
    """Bad streams of ``n`` plaintext bytes, each with the first segment that fails."""
    hlen = parse_stream_header(ct).header_len
    sealed = SEG + 16
    segments = -(-n // SEG)
    flipped_last = bytearray(ct)
    flipped_last[-1] ^= 1
    flipped_mid = bytearray(ct)
    flipped_mid[hlen + 5 * sealed + 9] ^= 0x80
    return [
        (ct[: hlen + (segments - 1) * sealed], segments - 2),  # final segment dropped
        (ct[: hlen + 4 * sealed], 3),  # cut at a boundary
        (ct[:-7], segments - 1),  # cut inside the final segment
        (bytes(flipped_last), segments - 1),
        (bytes(flipped_mid), 5),
        (ct + ct[hlen : hlen + sealed], segments - 1),  # a segment appended
    ]


def test_decryption_writes_only_authenticated_plaintext(
    svc: EncryptionService, small_runs: None, tmp_path: Path
) -> None:
    n = 9 * RUN + 100
    pt = data(n, 9)
    ct = seal(svc, pt)
    for bad, first_bad in cut_and_tampered(ct, n):
        for source in (io.BytesIO(bad), Pipe(bad)):
            sink = SlowSink(delay=0.0005)
            with pytest.raises(DecryptionError):
                svc.decrypt_stream(source, sink, CTX, AD)
            assert len(sink.out) <= max(0, first_bad) * SEG
            assert bytes(sink.out) == pt[: len(sink.out)]
        (tmp_path / "bad").write_bytes(bad)
        with pytest.raises(DecryptionError):
            svc.decrypt_file(tmp_path / "bad", tmp_path / "out", CTX, AD)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_a_closed_pulling_consumer_stops_the_pipeline(
    svc: EncryptionService, small_runs: None
) -> None:
    # The S3 upload path: the service pushes into an EncryptingReader from a producer thread,
    # whose writes now come from the pipeline's writer thread.
    pt = data(30 * RUN, 6)
    reader = streams.EncryptingReader(
        lambda dst: svc.encrypt_stream(io.BytesIO(pt), dst, CTX, AD, segment_size=SEG)
    )
    first = reader.read(RUN)
    assert len(first) == RUN
    reader.close()
    whole = streams.EncryptingReader(
        lambda dst: svc.encrypt_stream(io.BytesIO(pt), dst, CTX, AD, segment_size=SEG)
    )
    with whole:
        blob = whole.readall()
    assert blob.startswith(whole.header)
    assert open_all(svc, blob) == pt
