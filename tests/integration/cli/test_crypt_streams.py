"""The CLI on large objects: streams of any size in constant memory, ranges, progress on a
terminal only, and the single-shot envelopes written before streams still decrypting.

Everything runs the real command in a subprocess, as a user would.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.service import EncryptionService

CTX = ["--tenant", "acme", "--data-class", "exports"]


def env_for(data: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, GLC_DATA_DIR=str(data), **extra)


def run(
    data: Path, *args: str, stdin: bytes = b"", **env: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", *args],
        input=stdin,
        capture_output=True,
        env=env_for(data, **env),
        timeout=120,
        check=False,
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    assert run(d, "init").returncode == 0
    return d


def test_files_pipes_and_ranges(data: Path, tmp_path: Path) -> None:
    pt = os.urandom(3 * 65536 + 123)
    src, enc, out = tmp_path / "in.bin", tmp_path / "in.glc", tmp_path / "out.bin"
    src.write_bytes(pt)
    r = run(data, "encrypt", *CTX, "--segment-size", "65536", "-i", str(src), "-o", str(enc))
    assert r.returncode == 0, r.stderr
    # Quiet when not on a terminal.
    assert r.stderr == b"" and r.stdout == b""
    assert enc.read_bytes()[:1] == b"\xfb"
    assert run(data, "decrypt", *CTX, "-i", str(enc), "-o", str(out)).returncode == 0
    assert out.read_bytes() == pt
    piped = run(data, "encrypt", *CTX, stdin=pt)
    assert piped.returncode == 0 and piped.stdout[:1] == b"\xfb"
    back = run(data, "decrypt", *CTX, stdin=piped.stdout)
    assert back.returncode == 0 and back.stdout == pt and back.stderr == b""
    for spec, (a, b) in {
        "65530:65600": (65530, 65600),
        "100:": (100, None),
        ":7": (0, 7),
        "0:0": (0, 0),
    }.items():
        from_file = run(data, "decrypt", *CTX, "--range", spec, "-i", str(enc))
        assert from_file.stdout == pt[a:b], spec
        from_pipe = run(data, "decrypt", *CTX, "--range", spec, stdin=piped.stdout)
        assert from_pipe.stdout == pt[a:b], spec
    for bad in ("5", "x:y", "9:3", "-1:4"):
        r = run(data, "decrypt", *CTX, "--range", bad, "-i", str(enc))
        assert r.returncode == 2 and b"--range" in r.stderr
    with pytest.raises(subprocess.CalledProcessError):
        run(data, "encrypt", *CTX, "--segment-size", "100", stdin=b"x").check_returncode()


def test_threads_split_the_segments_and_bad_counts_are_usage_errors(
    data: Path, tmp_path: Path
) -> None:
    # One run of several 64 KiB segments, sealed and opened by several threads: the stream is
    # the same format, so either side may use any thread count.
    pt = os.urandom(9 * 65536 + 5)
    src, enc, out = tmp_path / "in.bin", tmp_path / "in.glc", tmp_path / "out.bin"
    src.write_bytes(pt)
    seg = ["--segment-size", "65536"]
    r = run(data, "encrypt", *CTX, *seg, "--threads", "3", "-i", str(src), "-o", str(enc))
    assert r.returncode == 0, r.stderr
    r = run(data, "decrypt", *CTX, "--threads", "4", "-i", str(enc), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == pt
    assert run(data, "decrypt", *CTX, "-i", str(enc)).stdout == pt
    ranged = run(data, "decrypt", *CTX, "--threads", "2", "--range", "65000:300000", "-i", str(enc))
    assert ranged.stdout == pt[65000:300000]
    for bad in ("0", "65", "two"):
        r = run(data, "encrypt", *CTX, "--threads", bad, "-i", str(src), "-o", str(tmp_path / "x"))
        assert r.returncode == 2 and b"--threads" in r.stderr, bad
        assert not (tmp_path / "x").exists()


def test_old_envelopes_still_decrypt(data: Path, tmp_path: Path) -> None:
    svc = EncryptionService.init_local(data)
    envelope = svc.encrypt(b"written before streams", EncryptionContext("acme", "exports"))
    svc.close()
    r = run(data, "decrypt", *CTX, stdin=envelope)
    assert r.returncode == 0 and r.stdout == b"written before streams"
    path = tmp_path / "old.enc"
    path.write_bytes(envelope)
    assert run(data, "decrypt", *CTX, "--range", "8:14", "-i", str(path)).stdout == b"before"
    single = run(data, "encrypt", *CTX, "--envelope", stdin=b"small value")
    assert single.returncode == 0 and single.stdout[:1] == b"\xfa"
    assert run(data, "decrypt", *CTX, stdin=single.stdout).stdout == b"small value"


def test_tampered_stream_fails_and_leaves_no_output(data: Path, tmp_path: Path) -> None:
    enc = run(data, "encrypt", *CTX, "--segment-size", "65536", stdin=os.urandom(200_000))
    bad = bytearray(enc.stdout)
    bad[-3] ^= 0x10
    src = tmp_path / "bad.glc"
    src.write_bytes(bytes(bad))
    out = tmp_path / "out.bin"
    r = run(data, "decrypt", *CTX, "-i", str(src), "-o", str(out))
    assert r.returncode == 2 and b"DecryptionError" in r.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.glc", "data"]
    wrong = run(data, "decrypt", "--tenant", "evil", "--data-class", "exports", stdin=enc.stdout)
    assert wrong.returncode == 2 and b"DecryptionError" in wrong.stderr


def test_progress_bar_only_on_a_terminal(data: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 << 20))
    master, replica = pty.openpty()
    # A terminal of 100 columns (a fresh pty has 0, where tqdm draws nothing).
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "greenlang_crypto", "encrypt", *CTX, "-i", str(src)],
            stdout=subprocess.DEVNULL,
            stderr=replica,
            env=env_for(data),
        )
        os.close(replica)
        seen = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    # tqdm's bar: the description, bytes in binary units and a rate.
    assert b"encrypt" in seen and b"3.00M/3.00M" in seen and b"B/s" in seen


class _Pattern:
    """A deterministic byte pattern, produced in 4 MiB blocks without holding the whole."""

    BLOCK = 4 << 20

    def __init__(self) -> None:
        self.block = hashlib.shake_256(b"glc-4GiB").digest(self.BLOCK)

    def chunks(self, total: int) -> list[tuple[int, int]]:
        return [(i, min(self.BLOCK, total - i)) for i in range(0, total, self.BLOCK)]


def _wait_rss(proc: subprocess.Popen[bytes]) -> tuple[int, int]:
    """Waits for ``proc``; returns its exit code and peak RSS in bytes (Linux ru_maxrss)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024


def test_four_gib_and_one_byte_through_the_cli_in_constant_memory(
    data: Path, tmp_path: Path
) -> None:
    total = (4 << 30) + 1
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    enc_path = base / f"glc-cli-4g-{os.getpid()}.glc"
    pattern = _Pattern()
    digest = hashlib.sha256()
    try:
        # Encrypt from a pipe (the plaintext never exists as a file) with 16 MiB segments.
        enc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "greenlang_crypto",
                "encrypt",
                *CTX,
                "--segment-size",
                str(16 << 20),
                "-o",
                str(enc_path),
            ],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env_for(data),
        )
        assert enc.stdin is not None
        view = memoryview(pattern.block)
        for _, n in pattern.chunks(total):
            enc.stdin.write(view[:n])
            digest.update(view[:n])
        enc.stdin.close()
        code, enc_rss = _wait_rss(enc)
        assert enc.stderr is not None
        with enc.stderr:
            assert code == 0, enc.stderr.read()
        assert enc_path.stat().st_size > total
        # Decrypt to a pipe and hash what arrives.
        dec = subprocess.Popen(
            [sys.executable, "-m", "greenlang_crypto", "decrypt", *CTX, "-i", str(enc_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env_for(data),
        )
        assert dec.stdout is not None
        back = hashlib.sha256()
        received = 0
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(dec.stderr.read()))  # type: ignore[union-attr]
        drain.start()
        while chunk := dec.stdout.read(8 << 20):
            back.update(chunk)
            received += len(chunk)
        code, dec_rss = _wait_rss(dec)
        drain.join()
        dec.stdout.close()
        dec.stderr.close()  # type: ignore[union-attr]
        assert code == 0, errors
        assert received == total and back.digest() == digest.digest()
        # Constant memory: an idle interpreter with the package is ~40-60 MiB; the stream
        # code adds a few segments of buffers, never the object.
        idle = _idle_rss(data)
        for rss in (enc_rss, dec_rss):
            assert rss - idle <= 2 * (16 << 20) + (16 << 20), (rss, idle)
    finally:
        enc_path.unlink(missing_ok=True)


def _idle_rss(data: Path) -> int:
    code = (
        "import resource, greenlang_crypto.cli, greenlang_crypto.service;"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env_for(data), check=True
    )
    return int(out.stdout)


def test_unreadable_input_and_oversized_envelope(data: Path, tmp_path: Path) -> None:
    r = run(data, "decrypt", *CTX, "-i", str(tmp_path / "absent.glc"))
    assert r.returncode == 2 and b"cannot read" in r.stderr
    # Not a stream: read as an envelope, which max_plaintext_bytes bounds (plus its header).
    r = run(data, "decrypt", *CTX, stdin=b"\xfa" + b"x" * 70_000, GLC_MAX_PLAINTEXT_BYTES="1000")
    assert r.returncode == 2 and b"PayloadTooLargeError" in r.stderr
