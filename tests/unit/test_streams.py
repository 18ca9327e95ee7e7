"""Streams (large objects) through the service on the embedded local provider.

Round trips over segment edges and arbitrary read and seek patterns, tampering of every kind
(header bit flips, segment bit flips, truncation, reordering, duplication, extension, a dropped
final segment), the opaque error and the promise that no unauthenticated plaintext is returned,
ranged reads that touch only their segments, atomic files, limits, accounting and asyncio.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenlang_crypto import EncryptionContext
from greenlang_crypto._core import (
    STREAM_MAGIC,
    STREAM_MIN_SEGMENT,
    parse_stream_header,
    wipe_buffer,
)
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import (
    DecryptionError,
    GreenlangCryptoError,
    InvalidArgumentError,
    KeyNotFoundError,
    KeyVersionUnavailableError,
    PayloadTooLargeError,
)
from greenlang_crypto.providers.base import GeneratedDataKey, KeyLimits
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.streams import DecryptingReader, is_stream

SEG = STREAM_MIN_SEGMENT
SEALED = SEG + 16
CTX = EncryptionContext(tenant_id="t1", data_class="documents")
AD = b"bucket/key"
EDGE_SIZES = [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG, 3 * SEG + 7]


class CountingProvider(LocalKeyProvider):
    """The real local provider, counting the data keys it generates."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.generated = 0

    def generate_data_key(
        self, key_id: str, context: EncryptionContext, limits: KeyLimits
    ) -> GeneratedDataKey:
        self.generated += 1
        return super().generate_data_key(key_id, context, limits)


def make(path: Path, **cfg: Any) -> tuple[EncryptionService, CountingProvider]:
    provider = CountingProvider(path)
    if not provider.versions():
        provider.create_master_key()
    config = EncryptionServiceConfig(data_dir=path, keyring_refresh_seconds=0, **cfg)
    return EncryptionService(config, provider=provider), provider


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptionService]:
    service, _ = make(tmp_path_factory.mktemp("streams"))
    yield service
    service.close()


def data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def seal(svc: EncryptionService, pt: bytes, ad: bytes = AD, **kw: Any) -> bytes:
    out = io.BytesIO()
    assert svc.encrypt_stream(io.BytesIO(pt), out, CTX, ad, segment_size=SEG, **kw) == len(pt)
    return out.getvalue()


class OneWay(io.RawIOBase):
    """A pipe-like source: readable, not seekable, short reads of random sizes."""

    def __init__(self, blob: bytes, seed: int = 1) -> None:
        self._blob = memoryview(blob)
        self._rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self._blob), self._rng.randint(1, 3 * SEG))
        b[:n] = self._blob[:n]
        self._blob = self._blob[n:]
        return n


class Counting(io.BytesIO):
    """A seekable source that counts the bytes read from it."""

    read_bytes = 0

    def readinto(self, b: Any) -> int:
        n = super().readinto(b)
        self.read_bytes += n
        return n


def read_until_error(reader: io.RawIOBase) -> tuple[bytes, BaseException | None]:
    got = bytearray()
    buf = bytearray(10_000)
    try:
        while True:
            n = reader.readinto(buf)
            if not n:
                return bytes(got), None
            got += buf[:n]
    except GreenlangCryptoError as exc:
        return bytes(got), exc


def assert_rejected(
    svc: EncryptionService, bad: bytes, pt: bytes, first_bad_segment: int, ad: bytes = AD
) -> None:
    """``bad`` fails with DecryptionError, seekable or not, and what was returned before the
    failure is genuine plaintext of the segments before ``first_bad_segment``."""
    for src in (io.BytesIO(bad), OneWay(bad)):
        try:
            reader = svc.open_decrypting(src, CTX, ad)
        except DecryptionError:
            continue
        with reader:
            got, exc = read_until_error(reader)
        assert isinstance(exc, DecryptionError), type(exc)
        assert len(got) <= first_bad_segment * SEG
        assert got == pt[: len(got)]
        # The failure is opaque: one of the two fixed messages, nothing else.
        assert str(exc) in ("", "decryption failed")


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", EDGE_SIZES)
@pytest.mark.parametrize("reference", ["stored", "inline"])
def test_round_trip_at_segment_edges(svc: EncryptionService, n: int, reference: str) -> None:
    pt = data(n, n)
    ct = seal(svc, pt, key_reference=reference)
    assert ct[0] == STREAM_MAGIC and is_stream(ct) and not is_stream(b"\xfa")
    header = parse_stream_header(ct)
    assert header.segment_size == SEG
    assert len(ct) == header.header_len + n + 16 * max(1, -(-n // SEG))
    with svc.open_decrypting(io.BytesIO(ct), CTX, AD) as r:
        assert r.seekable() and r.size == n
        assert r.read() == pt
    with svc.open_decrypting(OneWay(ct), CTX, AD) as r:
        assert not r.seekable() and r.size is None
        assert r.read() == pt
    chunks = [ct[i : i + 4097] for i in range(0, len(ct), 4097)]
    with svc.open_decrypting(iter(chunks), CTX, AD) as r:
        assert r.readall() == pt


def test_sources_and_threads(svc: EncryptionService) -> None:
    pt = data(5 * SEG + 11)
    pieces = [pt[i : i + 1000] for i in range(0, len(pt), 1000)]
    out = io.BytesIO()
    assert svc.encrypt_stream(iter(pieces), out, CTX, AD, segment_size=SEG, threads=2) == len(pt)
    out2 = io.BytesIO()
    svc.encrypt_stream(OneWay(pt), out2, CTX, AD, segment_size=SEG)
    assert out.getvalue() != out2.getvalue()  # a fresh salt and prefix per stream
    for ct in (out.getvalue(), out2.getvalue()):
        with svc.open_decrypting(io.BytesIO(ct), CTX, AD, threads=2) as r:
            assert r.read() == pt

    class ReadOnly:
        """Only ``read`` (as botocore's StreamingBody)."""

        def __init__(self, blob: bytes) -> None:
            self._f = io.BytesIO(blob)

        def read(self, n: int = -1) -> bytes:
            return self._f.read(n)

    out3 = io.BytesIO()
    svc.encrypt_stream(ReadOnly(pt), out3, CTX, AD, segment_size=SEG)
    with svc.open_decrypting(ReadOnly(out3.getvalue()), CTX, AD) as r:
        assert r.read() == pt


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.one_of(st.sampled_from(EDGE_SIZES), st.integers(0, 4 * SEG + 100)),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["set", "cur", "end", "none"]),
            st.integers(-2 * SEG, 5 * SEG),
            st.integers(-1, 2 * SEG + 3),
        ),
        max_size=12,
    ),
)
def test_read_and_seek_like_a_file(svc: EncryptionService, n: int, ops: list[Any]) -> None:
    pt = data(n, n)
    ct = seal(svc, pt)
    model = io.BytesIO(pt)
    with svc.open_decrypting(io.BytesIO(ct), CTX, AD) as r:
        for whence, step, size in ops:
            if whence != "none":
                code = {"set": os.SEEK_SET, "cur": os.SEEK_CUR, "end": os.SEEK_END}[whence]
                offset = abs(step) if whence == "set" else step
                target = {"set": 0, "cur": model.tell(), "end": n}[whence] + offset
                if target < 0:
                    with pytest.raises(ValueError):
                        r.seek(offset, code)
                    continue
                assert r.seek(offset, code) == model.seek(offset, code)
            assert r.read(size) == model.read(size)
            assert r.tell() == model.tell()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.one_of(st.sampled_from(EDGE_SIZES), st.integers(0, 4 * SEG + 100)),
    sizes=st.lists(st.integers(1, 3 * SEG), min_size=1, max_size=8),
)
def test_sequential_reads_from_a_pipe(svc: EncryptionService, n: int, sizes: list[int]) -> None:
    pt = data(n, n + 1)
    ct = seal(svc, pt)
    got = bytearray()
    with svc.open_decrypting(OneWay(ct, seed=n), CTX, AD) as r:
        i = 0
        while True:
            chunk = r.read(sizes[i % len(sizes)])
            i += 1
            if not chunk:
                break
            got += chunk
    assert bytes(got) == pt


def test_decrypt_stream_ranges(svc: EncryptionService) -> None:
    pt = data(4 * SEG + 5)
    ct = seal(svc, pt)
    for start, end in [(0, None), (0, 0), (1, 2), (SEG - 3, SEG + 3), (2 * SEG, 3 * SEG + 9)]:
        for src in (io.BytesIO(ct), OneWay(ct)):
            out = io.BytesIO()
            n = svc.decrypt_stream(src, out, CTX, AD, start=start, end=end)
            assert out.getvalue() == pt[start:end] and n == len(pt[start:end])
    out = io.BytesIO()
    assert svc.decrypt_stream(io.BytesIO(ct), out, CTX, AD, start=len(pt) + 10) == 0
    with pytest.raises(InvalidArgumentError):
        svc.decrypt_stream(io.BytesIO(ct), io.BytesIO(), CTX, AD, start=5, end=4)


def test_ranged_read_touches_only_its_segments(svc: EncryptionService) -> None:
    pt = data(20 * SEG)
    ct = seal(svc, pt)
    hlen = parse_stream_header(ct).header_len
    for offset in (13 * SEG, 13 * SEG + 100):
        src = Counting(ct)
        with svc.open_decrypting(src, CTX, AD) as r:
            r.seek(offset)
            assert r.read(SEG) == pt[offset : offset + SEG]
        # The header, then the one or two segments that cover the range.
        assert src.read_bytes <= hlen + 2 * SEALED
    src = Counting(ct)
    with svc.open_decrypting(src, CTX, AD) as r:
        r.seek(-5, os.SEEK_END)
        assert r.read() == pt[-5:]
    assert src.read_bytes <= hlen + SEALED


def test_closing_a_reader_wipes_its_plaintext_buffers(svc: EncryptionService) -> None:
    # Two runs, so both plaintext buffers (see read_view's double buffering) held plaintext.
    pt = data(40 * SEG)
    r = svc.open_decrypting(io.BytesIO(seal(svc, pt)), CTX, AD)
    r._double_buffer()
    first = r.read_view(r.run_bytes)
    second = r.read_view(r.run_bytes)
    assert bytes(first) == pt[: len(first)] and bytes(second) == pt[len(first) : 2 * len(first)]
    r.close()
    # The views still point into the buffers the reader held: zeros, not plaintext.
    assert not any(first) and not any(second)


def test_wipe_buffer_zeroes_writable_buffers_and_refuses_others() -> None:
    buf = bytearray(b"secret plaintext")
    view = memoryview(buf)[7:]
    wipe_buffer(view)
    assert buf == b"secret " + bytes(9)
    wipe_buffer(buf)
    assert buf == bytes(16)
    with pytest.raises(TypeError, match="writable"):
        wipe_buffer(b"immutable")
    with pytest.raises(TypeError):
        wipe_buffer("text")  # type: ignore[arg-type]


def test_stream_after_other_data_in_the_source(svc: EncryptionService) -> None:
    pt = data(2 * SEG + 1)
    src = io.BytesIO(b"prefix!" + seal(svc, pt))
    src.seek(7)
    with svc.open_decrypting(src, CTX, AD) as r:
        r.seek(SEG)
        assert r.read() == pt[SEG:]


# -- tampering ------------------------------------------------------------------------------


def test_every_header_bit_flip_fails(svc: EncryptionService) -> None:
    pt = data(SEG + 3)
    ct = seal(svc, pt)
    hlen = parse_stream_header(ct).header_len
    for bit in range(hlen * 8):
        bad = bytearray(ct)
        bad[bit // 8] ^= 1 << (bit % 8)
        # Bytes 14-17 of a stored reference are the key version, 18-25 the DEK id: an unknown
        # version or id is reported as such (that names no secret and is no oracle).
        allowed: tuple[type[Exception], ...] = (DecryptionError,)
        if 14 <= bit // 8 < 26:
            allowed = (DecryptionError, KeyVersionUnavailableError, KeyNotFoundError)
        with pytest.raises(allowed):
            with svc.open_decrypting(io.BytesIO(bytes(bad)), CTX, AD) as r:
                r.read()


def test_sampled_segment_bit_flips_fail(svc: EncryptionService) -> None:
    pt = data(3 * SEG + 100)
    ct = seal(svc, pt)
    hlen = parse_stream_header(ct).header_len
    rng = random.Random(7)
    positions = {hlen, hlen + SEG, hlen + SEALED - 1, hlen + SEALED, len(ct) - 1, len(ct) - 17}
    positions |= {rng.randrange(hlen, len(ct)) for _ in range(60)}
    for pos in sorted(positions):
        bad = bytearray(ct)
        bad[pos] ^= 1 << rng.randrange(8)
        assert_rejected(svc, bytes(bad), pt, (pos - hlen) // SEALED)


def test_truncation_at_every_boundary_and_random_offsets(svc: EncryptionService) -> None:
    pt = data(3 * SEG + 100)
    ct = seal(svc, pt)
    hlen = parse_stream_header(ct).header_len
    cuts = {hlen + i * SEALED for i in range(4)} | {0, 1, 9, 10, hlen - 1, len(ct) - 1}
    rng = random.Random(3)
    cuts |= {rng.randrange(0, len(ct)) for _ in range(40)}
    for cut in sorted(cuts):
        bad = ct[:cut]
        with pytest.raises(DecryptionError):
            with svc.open_decrypting(io.BytesIO(bad), CTX, AD) as r:
                got, exc = read_until_error(r)
                assert got == pt[: len(got)]
                if exc is not None:
                    raise exc
        if cut > hlen:
            # Segments before the cut one are intact; at a boundary the last whole segment
            # left is the first to fail (it was not sealed as final).
            whole, rest = divmod(cut - hlen, SEALED)
            assert_rejected(svc, bad, pt, whole if rest else whole - 1)


def test_reordered_duplicated_dropped_and_appended_segments_fail(
    svc: EncryptionService,
) -> None:
    pt = data(3 * SEG + 100)
    ct = seal(svc, pt)
    hlen = parse_stream_header(ct).header_len
    head, segs = ct[:hlen], [ct[hlen + i * SEALED : hlen + (i + 1) * SEALED] for i in range(4)]
    # Swapping two segments.
    assert_rejected(svc, head + segs[1] + segs[0] + segs[2] + segs[3], pt, 0)
    assert_rejected(svc, head + segs[0] + segs[2] + segs[1] + segs[3], pt, 1)
    # Duplicating one.
    assert_rejected(svc, head + segs[0] + segs[0] + segs[1] + segs[2] + segs[3], pt, 1)
    # Dropping the final segment: the last one left is not sealed as final.
    assert_rejected(svc, head + b"".join(segs[:3]), pt, 2)
    # Appending a segment of another stream under the same DEK (the same cached key).
    other = seal(svc, data(4 * SEG + 1, 9))
    other_hlen = parse_stream_header(other).header_len
    assert parse_stream_header(other).key_envelope == parse_stream_header(ct).key_envelope
    extra = other[other_hlen + 3 * SEALED : other_hlen + 4 * SEALED]
    assert_rejected(svc, ct + extra, pt, 3)
    # Replacing the final segment by the other stream's final segment.
    assert_rejected(svc, head + b"".join(segs[:3]) + other[other_hlen + 4 * SEALED :], pt, 3)
    # Trailing bytes of any length.
    for extra_len in (1, 16, 17, SEALED):
        assert_rejected(svc, ct + b"\x00" * extra_len, pt, 3)


def test_other_context_or_binding_fails_at_open(svc: EncryptionService) -> None:
    ct = seal(svc, data(100))
    for ctx, ad in [
        (CTX, b"bucket/other-key"),
        (CTX, b""),
        (EncryptionContext(tenant_id="t2", data_class="documents"), AD),
    ]:
        with pytest.raises(DecryptionError):
            svc.open_decrypting(io.BytesIO(ct), ctx, ad)
    # An envelope is not a stream, and garbage is neither.
    for blob in (svc.encrypt(b"x", CTX), b"", b"\xfb", os.urandom(200)):
        with pytest.raises(DecryptionError):
            svc.open_decrypting(io.BytesIO(blob), CTX, AD)


def test_failed_reader_stays_failed(svc: EncryptionService) -> None:
    pt = data(2 * SEG)
    ct = bytearray(seal(svc, pt))
    ct[-1] ^= 1
    with svc.open_decrypting(io.BytesIO(bytes(ct)), CTX, AD) as r:
        assert r.read(SEG) == pt[:SEG]
        with pytest.raises(DecryptionError):
            r.read(SEG)
        with pytest.raises(DecryptionError):
            r.read(1)
        r.seek(0)
        with pytest.raises(DecryptionError):
            r.read_view(1)
        with pytest.raises(DecryptionError):
            r.readinto(bytearray(1))


# -- the reader as a file -------------------------------------------------------------------


def test_reader_file_behaviour(svc: EncryptionService) -> None:
    pt = data(SEG + 10)
    ct = seal(svc, pt)
    r = svc.open_decrypting(io.BytesIO(ct), CTX, AD)
    assert isinstance(r, DecryptingReader) and isinstance(r, io.RawIOBase)
    assert r.readable() and not r.writable() and r.seekable()
    assert "segment_size" in repr(r) and pt[:4].hex() not in repr(r)
    assert r.readinto(bytearray()) == 0
    with pytest.raises(io.UnsupportedOperation):
        r.write(b"x")
    with pytest.raises(ValueError):
        r.seek(0, 7)
    buffered = io.BufferedReader(r)
    assert buffered.read(5) == pt[:5]
    buffered.seek(SEG)
    assert buffered.read() == pt[SEG:]
    buffered.close()
    assert r.closed
    with pytest.raises(ValueError):
        r.read(1)
    with pytest.raises(ValueError):
        r.tell()
    r.close()  # twice is fine
    pipe = svc.open_decrypting(OneWay(ct), CTX, AD)
    with pipe:
        with pytest.raises(io.UnsupportedOperation):
            pipe.seek(0)
        assert pipe.read(SEG + 1) == pt[: SEG + 1]
        assert pipe.read() == pt[SEG + 1 :]
    # close_source closes the source with the reader.
    src = io.BytesIO(ct)
    svc.open_decrypting(src, CTX, AD, close_source=True).close()
    assert src.closed


def test_bad_arguments_change_nothing(tmp_path: Path) -> None:
    svc, provider = make(tmp_path)
    for seg in (SEG - 1, 16 * 1024 * 1024 + 1):
        with pytest.raises(InvalidArgumentError):
            svc.encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), CTX, segment_size=seg)
    with pytest.raises(InvalidArgumentError):
        svc.encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), CTX, key_reference="other")
    assert provider.generated == 0
    for bad_src in (b"bytes", "text", 42, io.StringIO("text")):
        with pytest.raises(TypeError):
            svc.encrypt_stream(bad_src, io.BytesIO(), CTX)
    with pytest.raises(TypeError):
        svc.encrypt_stream(iter(["text"]), io.BytesIO(), CTX)
    with pytest.raises(TypeError):
        svc.encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), CTX, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        svc.encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), CTX, threads=0)
    svc.close()


# -- limits, keys and accounting ------------------------------------------------------------


def test_stream_limit_and_envelope_limit(tmp_path: Path) -> None:
    svc, provider = make(tmp_path, stream_max_bytes=3 * SEG, max_plaintext_bytes=1000)
    big = tmp_path / "big"
    big.write_bytes(data(3 * SEG + 1))
    with pytest.raises(PayloadTooLargeError):
        svc.encrypt_file(big, tmp_path / "big.enc", CTX)
    # A regular file is refused before any KMS call, and nothing is left behind.
    assert provider.generated == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("big", ".big"))) == [
        "big"
    ]
    # Any other source fails once it passes the limit.
    with pytest.raises(PayloadTooLargeError):
        svc.encrypt_stream(OneWay(data(3 * SEG + 1)), io.BytesIO(), CTX)
    # max_plaintext_bytes (for envelopes) does not bind streams.
    ok = data(3 * SEG)
    out = io.BytesIO()
    assert svc.encrypt_stream(OneWay(ok), out, CTX, segment_size=SEG) == 3 * SEG
    with svc.open_decrypting(io.BytesIO(out.getvalue()), CTX) as r:
        assert r.read() == ok
    with pytest.raises(PayloadTooLargeError):
        svc.encrypt(ok, CTX)
    svc.close()


def test_one_dek_per_stream_from_the_envelope_cache(tmp_path: Path) -> None:
    svc, provider = make(tmp_path, max_messages_per_dek=2)
    svc.encrypt(b"warm", CTX)
    assert provider.generated == 1
    streams = []
    for i in range(3):
        out = io.BytesIO()
        svc.encrypt_stream(io.BytesIO(data(SEG + i)), out, CTX, segment_size=SEG)
        streams.append(out.getvalue())
    # Each stream takes one message of the cached DEK's budget: the first stream shares the
    # envelope's DEK, the next two need a fresh one (a budget of 2 messages per DEK).
    assert provider.generated == 2
    for i, ct in enumerate(streams):
        with svc.open_decrypting(io.BytesIO(ct), CTX) as r:
            assert r.read() == data(SEG + i)
    svc.close()


def test_counts_by_data_class_and_events(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []

    class Observer:
        def on_event(self, event: str, fields: Any) -> None:
            events.append((event, dict(fields)))

    provider = LocalKeyProvider(tmp_path)
    provider.create_master_key()
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=tmp_path, keyring_refresh_seconds=0),
        provider=provider,
        observers=[Observer()],
        per_operation_events=True,
    )
    before = svc.operation_counts()
    assert before == {"encrypt": {}, "decrypt": {}}
    ct = seal(svc, data(2 * SEG + 5))
    with svc.open_decrypting(io.BytesIO(ct), CTX, AD) as r:
        r.read()
    counts = svc.operation_counts()
    assert counts["encrypt"]["documents"] == (1, 2 * SEG + 5)
    assert counts["decrypt"]["documents"] == (1, 2 * SEG + 5)
    performed = [(e, f["size"]) for e, f in events if e.endswith("_performed")]
    assert performed == [
        ("encryption_performed", 2 * SEG + 5),
        ("decryption_performed", 2 * SEG + 5),
    ]
    with pytest.raises(DecryptionError):
        svc.open_decrypting(io.BytesIO(ct), CTX, b"wrong")
    assert svc.failure_counts()[("decrypt", "DecryptionError")] == 1
    assert any(e == "decryption_failed" for e, _ in events)
    svc.close()


# -- files and asyncio ----------------------------------------------------------------------


def test_files_are_atomic_and_private(svc: EncryptionService, tmp_path: Path) -> None:
    pt = data(2 * SEG + 3)
    src = tmp_path / "report.pdf"
    src.write_bytes(pt)
    enc = tmp_path / "report.pdf.glc"
    old = os.umask(0)
    try:
        assert svc.encrypt_file(src, enc, CTX, AD, segment_size=SEG) == len(pt)
    finally:
        os.umask(old)
    assert stat.S_IMODE(enc.stat().st_mode) == 0o600
    out = tmp_path / "out.pdf"
    assert svc.decrypt_file(enc, out, CTX, AD) == len(pt)
    assert out.read_bytes() == pt and stat.S_IMODE(out.stat().st_mode) == 0o600
    part = tmp_path / "part"
    assert svc.decrypt_file(enc, part, CTX, AD, start=SEG - 1, end=SEG + 2) == 3
    assert part.read_bytes() == pt[SEG - 1 : SEG + 2]
    # A tampered stream leaves the previous output untouched and no temporary file.
    bad = bytearray(enc.read_bytes())
    bad[-1] ^= 1
    enc.write_bytes(bytes(bad))
    with pytest.raises(DecryptionError):
        svc.decrypt_file(enc, out, CTX, AD)
    assert out.read_bytes() == pt
    with pytest.raises(DecryptionError):
        svc.decrypt_file(enc, tmp_path / "new", CTX, AD)
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_async_variants_do_not_block_the_loop(svc: EncryptionService, tmp_path: Path) -> None:
    pt = data(8 * SEG)
    src = tmp_path / "in"
    src.write_bytes(pt)

    async def main() -> int:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        await svc.encrypt_file_async(src, tmp_path / "enc", CTX, segment_size=SEG)
        await svc.decrypt_file_async(tmp_path / "enc", tmp_path / "dec", CTX)
        out = io.BytesIO()
        await svc.encrypt_stream_async(io.BytesIO(pt), out, CTX, segment_size=SEG)
        back = io.BytesIO()
        await svc.decrypt_stream_async(io.BytesIO(out.getvalue()), back, CTX)
        assert back.getvalue() == pt
        done.set()
        await t
        return ticks

    ticks = asyncio.run(main())
    assert (tmp_path / "dec").read_bytes() == pt
    # The loop kept running while the work happened on worker threads.
    assert ticks > 4


@pytest.mark.parametrize("size", [(1 << 20) - 1, 1 << 20, 2 << 20, (3 << 20) + 5])
def test_files_over_several_runs(svc: EncryptionService, tmp_path: Path, size: int) -> None:
    # A regular file's size spares the look-ahead byte between runs (of 1 MiB).
    pt = data(size, size)
    src, enc, out = tmp_path / "in", tmp_path / "enc", tmp_path / "out"
    src.write_bytes(pt)
    assert svc.encrypt_file(src, enc, CTX, segment_size=SEG) == size
    header = parse_stream_header(enc.read_bytes()[:4096])
    assert enc.stat().st_size == header.header_len + size + 16 * max(1, -(-size // SEG))
    svc.decrypt_file(enc, out, CTX)
    assert out.read_bytes() == pt


def test_a_file_that_shrinks_or_grows_while_read(svc: EncryptionService, tmp_path: Path) -> None:
    class Changing(io.RawIOBase):
        """A regular file that changes length after its first read (as a log file might)."""

        def __init__(self, path: Path, change: Any) -> None:
            self._f = path.open("r+b", buffering=0)
            self._change = change

        def readable(self) -> bool:
            return True

        def fileno(self) -> int:
            return self._f.fileno()

        def readinto(self, b: Any) -> int:
            n = self._f.readinto(b) or 0
            if self._change is not None:
                self._change(self._f)
                self._change = None
            return n

        def close(self) -> None:
            self._f.close()
            super().close()

    path = tmp_path / "log"
    for change, expect in [
        (lambda f: f.truncate(1 << 20), data(1 << 20, 5)),
        (lambda f: os.pwrite(f.fileno(), b"more", 3 << 20), data(3 << 20, 5) + b"more"),
    ]:
        path.write_bytes(data(3 << 20, 5))
        out = io.BytesIO()
        with Changing(path, change) as src:
            assert svc.encrypt_stream(src, out, CTX, segment_size=SEG) == len(expect)
        with svc.open_decrypting(io.BytesIO(out.getvalue()), CTX) as r:
            assert r.read() == expect


def test_readme_streams_snippet_runs(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Large objects: files, streams and S3") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    res = subprocess.run(
        [sys.executable, "-c", match.group(1)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=dict(os.environ, GLC_DATA_DIR=str(tmp_path / "data")),
        check=False,
    )
    assert res.returncode == 0, res.stderr
    plain = b"".join(b"chunk %d\n" % i for i in range(1000))
    assert res.stdout.strip() == repr(plain[4000:4009])
    assert (tmp_path / "report-copy.csv").read_bytes() == b"id,amount\n" * 100_000
    assert stat.S_IMODE((tmp_path / "report.csv.glc").stat().st_mode) == 0o600


def test_odd_sources_and_destinations(svc: EncryptionService, tmp_path: Path) -> None:
    class NonBlocking(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> None:  # type: ignore[override]
            return None  # what a non-blocking pipe returns when it has nothing

    class Trickle(io.RawIOBase):
        """Writes at most 1000 bytes per call, as a raw file may."""

        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            n = min(len(b), 1000)
            self.data += bytes(b[:n])
            return n

    class Full:
        def write(self, b: Any) -> None:
            return None

    with pytest.raises(InvalidArgumentError):
        svc.encrypt_stream(NonBlocking(), io.BytesIO(), CTX)
    with pytest.raises(InvalidArgumentError):
        svc.encrypt_stream(io.BytesIO(b"x"), Full(), CTX)
    pt = data(SEG + 5)
    trickle = Trickle()
    svc.encrypt_stream(io.BytesIO(pt), trickle, CTX, segment_size=SEG)
    seen: list[int] = []
    back = io.BytesIO()
    chunks = iter([bytes(trickle.data)])
    assert svc.decrypt_stream(chunks, back, CTX, progress=seen.append) == len(pt)
    assert back.getvalue() == pt and sum(seen) == len(pt)
    # A range that starts past the end of a pipe gives nothing.
    assert svc.decrypt_stream(OneWay(bytes(trickle.data)), io.BytesIO(), CTX, start=10**7) == 0
    # A seekable source that shrinks after the header was verified.
    path = tmp_path / "shrinks"
    path.write_bytes(bytes(trickle.data))
    with path.open("r+b") as f, svc.open_decrypting(f, CTX) as r:
        f.truncate(200)
        with pytest.raises(DecryptionError):
            r.read()


def test_several_threads_per_run(svc: EncryptionService, tmp_path: Path) -> None:
    # With 1 MiB segments a run holds one segment per thread, so each thread has one to seal.
    pt = data((3 << 20) + 5, 11)
    src, enc, out = tmp_path / "in", tmp_path / "enc", tmp_path / "out"
    src.write_bytes(pt)
    assert svc.encrypt_file(src, enc, CTX, threads=2) == len(pt)
    assert svc.decrypt_file(enc, out, CTX, threads=2) == len(pt)
    assert out.read_bytes() == pt
    with enc.open("rb") as f, svc.open_decrypting(OneWay(f.read()), CTX, threads=3) as r:
        assert r.run_bytes == 3 << 20
        assert r.read() == pt


def test_a_service_whose_envelopes_use_branch_keys_streams_under_a_stored_dek(
    tmp_path: Path,
) -> None:
    branchy, _ = make(tmp_path / "branch", key_reference="branch")
    with branchy:
        pt = data(3 * SEG + 5, seed=9)
        blob = seal(branchy, pt)
        assert parse_stream_header(blob).key_envelope[:1] == bytes([0xFA])
        assert b"".join(branchy.open_decrypting(io.BytesIO(blob), CTX, AD)) == pt
        # Envelopes still use the branch key; only streams fall back.
        assert branchy.decrypt(branchy.encrypt(b"v", CTX), CTX) == b"v"
        # Asked for explicitly, a branch reference is refused with a typed error.
        with pytest.raises(InvalidArgumentError, match="stored' or 'inline"):
            seal(branchy, pt, key_reference="branch")


def _child_seals_with_threads(conn: Any) -> None:
    from greenlang_crypto import _core as core

    key = core.DataKey.generate()
    ctx = core.canonical_context({"tenant_id": "t", "data_class": "d"})
    ref = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=1).header
    enc = core.StreamEncryptor(key, ref, ctx, b"", segment_size=SEG)
    pt = data(4 * SEG + 3, 5)
    out = enc.seal(pt, True, threads=3)
    dec = core.StreamDecryptor(key, enc.header, ctx, b"")
    conn.send(dec.open(0, out, True, threads=3) == pt)


def test_worker_threads_are_rebuilt_in_a_forked_child(svc: EncryptionService) -> None:
    # The parent's sealing workers do not exist in a forked child: a child that splits a run
    # across threads must start its own instead of waiting forever on the parent's.
    import multiprocessing

    blob = seal(svc, data(4 * SEG, 3), threads=3)
    assert b"".join(svc.open_decrypting(io.BytesIO(blob), CTX, AD, threads=3)) == data(4 * SEG, 3)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child_seals_with_threads, args=(child,))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("a forked child hung sealing with several threads")
    assert proc.exitcode == 0
    assert parent.recv() is True
