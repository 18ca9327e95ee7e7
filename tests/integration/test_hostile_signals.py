"""Killed mid-decrypt: no plaintext is ever left, or visible, in the output's directory.

A ~200 MB stream is decrypted by a real process (the CLI, or ``EncryptionService.
decrypt_file``) that reads its ciphertext from a pipe the test feeds: half of it, then
nothing, so the process is caught mid-way for certain. While it waits, the output directory
must show nothing at all; then the process gets SIGTERM, SIGHUP or SIGKILL, and the
directory (hidden files included) is searched for the plaintext's marker.

The portable path (a named temporary file, for file systems without ``O_TMPFILE``) is run
too: a signal removes its temporary, and what a SIGKILL leaves is removed by the next run in
that directory once it is old, and only if it is ours.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.service import EncryptionService

CTX = ["--tenant", "acme", "--data-class", "pii"]
CONTEXT = EncryptionContext("acme", "pii")
MIB = 1 << 20
SIZE = 200 * MIB
# Output written before the signal is sent: well into the file, far from its end.
CAUGHT_AT = 48 * MIB


def _marked_block(marker: bytes) -> bytes:
    """One MiB of random bytes with ``marker`` every 4 KiB."""
    filler = os.urandom(MIB)
    page = 4096
    return b"".join(marker + filler[i + len(marker) : i + page] for i in range(0, MIB, page))


@pytest.fixture(scope="module")
def marker() -> bytes:
    return b"GLC-HOSTILE-" + secrets.token_hex(8).encode()


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory, marker: bytes) -> tuple[Path, Path]:
    """A data directory and a ~200 MB stream of marked plaintext sealed under it."""
    base = tmp_path_factory.mktemp("sealed")
    data = base / "data"
    src = base / "plain.bin"
    block = _marked_block(marker)
    with src.open("wb") as f:
        for _ in range(SIZE // MIB):
            f.write(block)
    out = base / "plain.glc"
    with EncryptionService.init_local(data) as svc:
        svc.encrypt_file(src, out, CONTEXT)
    src.unlink()
    return data, out


def _holding(directory: Path, marker: bytes) -> list[str]:
    """Every file under ``directory`` (hidden ones too) whose bytes contain ``marker``."""
    found = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            if not path.is_file() or path.is_symlink():
                continue
            tail = b""
            with path.open("rb") as f:
                while chunk := f.read(4 * MIB):
                    if marker in tail + chunk:
                        found.append(str(path))
                        break
                    tail = chunk[-len(marker) :]
    return found


def _written(pid: int) -> int:
    """Bytes the process has passed to write(2) so far."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/<pid>/io")


def _wait_until_written(proc: subprocess.Popen[bytes], amount: int) -> None:
    deadline = time.monotonic() + 120
    while _written(proc.pid) < amount:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        assert time.monotonic() < deadline, "the process wrote too little"
        time.sleep(0.01)


class _Feeder:
    """Writes the first half of ``source`` to ``sink``, then holds it open (no EOF)."""

    def __init__(self, source: Path, sink: BinaryIO) -> None:
        self._sink = sink
        self._source = source
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        half = self._source.stat().st_size // 2
        with self._source.open("rb") as f:
            sent = 0
            while sent < half:
                chunk = f.read(min(MIB, half - sent))
                try:
                    self._sink.write(chunk)
                    self._sink.flush()
                except (OSError, ValueError):  # the reader died: nothing more to feed
                    return
                sent += len(chunk)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sink.close()
        self._thread.join(timeout=30)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def _kill_mid_way(proc: subprocess.Popen[bytes], feeder: _Feeder, out: Path, sig: int) -> None:
    """Waits until ``proc`` is well into its output, checks nothing shows, sends ``sig``."""
    try:
        _wait_until_written(proc, CAUGHT_AT)
        # Mid-way: the decrypted half exists only where no other process can open it.
        assert sorted(os.listdir(out)) == []
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        _end(proc, feeder)
    assert proc.returncode == -sig, proc.returncode


def _end(proc: subprocess.Popen[bytes], feeder: _Feeder) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)
    feeder.close()
    if proc.stderr is not None:
        proc.stderr.close()


def _cli_decrypt(data: Path, output: Path, prelude: str = "") -> subprocess.Popen[bytes]:
    """The CLI in a process of its own, reading the stream from its stdin."""
    argv = ["--data-dir", str(data), "decrypt", *CTX, "-o", str(output)]
    code = f"{prelude}\nfrom greenlang_crypto.cli import main\nraise SystemExit(main({argv!r}))"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_cli_killed_mid_decrypt_leaves_no_plaintext(
    sealed: tuple[Path, Path], out_dir: Path, marker: bytes, sig: int
) -> None:
    data, stream = sealed
    proc = _cli_decrypt(data, out_dir / "plain.bin")
    assert proc.stdin is not None
    feeder = _Feeder(stream, proc.stdin)
    _kill_mid_way(proc, feeder, out_dir, sig)
    assert _holding(out_dir, marker) == []
    assert sorted(os.listdir(out_dir)) == []


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "in.fifo"
    os.mkfifo(path, 0o600)
    return path


def _open_for_writing(path: Path) -> BinaryIO:
    # Blocks until the process under test opens the FIFO for reading.
    return path.open("wb", buffering=0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_decrypt_file_killed_mid_way_leaves_no_plaintext(
    sealed: tuple[Path, Path], out_dir: Path, fifo: Path, marker: bytes, sig: int
) -> None:
    data, stream = sealed
    code = (
        "from greenlang_crypto.context import EncryptionContext\n"
        "from greenlang_crypto.service import EncryptionService\n"
        f"svc = EncryptionService.init_local({str(data)!r})\n"
        f"svc.decrypt_file({str(fifo)!r}, {str(out_dir / 'plain.bin')!r}, "
        "EncryptionContext('acme', 'pii'))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    feeder = _Feeder(stream, _open_for_writing(fifo))
    _kill_mid_way(proc, feeder, out_dir, sig)
    assert _holding(out_dir, marker) == []
    assert sorted(os.listdir(out_dir)) == []


# -- the portable path: a named temporary file ---------------------------------------------

NAMED_ONLY = "import greenlang_crypto._files as _files\n_files.USE_TMPFILE = False"
# A process started from a terminal: SIGHUP at its default action whatever the test runner
# inherited (under `nohup` it is ignored, and an ignored signal is left ignored: see below).
HUP_DEFAULT = "import signal\nsignal.signal(signal.SIGHUP, signal.SIG_DFL)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_removes_the_named_temporary(
    sealed: tuple[Path, Path], out_dir: Path, marker: bytes, sig: int
) -> None:
    data, stream = sealed
    proc = _cli_decrypt(data, out_dir / "plain.bin", f"{HUP_DEFAULT}\n{NAMED_ONLY}")
    assert proc.stdin is not None
    feeder = _Feeder(stream, proc.stdin)
    try:
        _wait_until_written(proc, CAUGHT_AT)
        # This path has a name while it is written: hidden, 0600, of a recognisable form.
        (name,) = os.listdir(out_dir)
        assert name.startswith(".plain.bin.glc-") and name.endswith(".tmp"), name
        assert (out_dir / name).stat().st_mode & 0o777 == 0o600
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        _end(proc, feeder)
    assert proc.returncode == -sig  # the signal still ends the process, as it would have
    assert _holding(out_dir, marker) == []
    assert sorted(os.listdir(out_dir)) == []


def test_a_sighup_the_process_ignores_stays_ignored(
    sealed: tuple[Path, Path], out_dir: Path, marker: bytes
) -> None:
    # Started under `nohup`: the terminal closing must not end the run, so the library puts
    # no handler in front of an ignored SIGHUP; the run goes on and finishes its output.
    data, stream = sealed
    ignored = "import signal\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)"
    proc = _cli_decrypt(data, out_dir / "plain.bin", f"{ignored}\n{NAMED_ONLY}")
    assert proc.stdin is not None
    feeder = _Feeder(stream, proc.stdin)
    try:
        _wait_until_written(proc, CAUGHT_AT)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None  # still running
        (name,) = os.listdir(out_dir)
        assert name.startswith(".plain.bin.glc-")
    finally:
        _end(proc, feeder)


@pytest.fixture
def decoys(out_dir: Path) -> Iterator[dict[str, Path]]:
    """Files the sweep must leave alone, beside the output."""
    old = time.time() - 2 * 3600
    paths = {
        # Not our pattern, however old.
        "other": out_dir / ".plain.bin.12345.deadbeef.tmp",
        # Our pattern, but recent: a run that is still writing.
        "recent": out_dir / ".plain.bin.glc-12345-0123456789abcdef.tmp",
        # Our pattern and old, but someone else's.
        "foreign": out_dir / ".plain.bin.glc-12346-0123456789abcdef.tmp",
    }
    for key, path in paths.items():
        path.write_bytes(b"not ours to remove")
        if key != "recent":
            os.utime(path, (old, old))
    if os.geteuid() == 0:
        os.chown(paths["foreign"], 4242, 4242)
    else:
        del paths["foreign"]
    yield paths


def test_a_sigkill_leftover_is_swept_by_the_next_run(
    sealed: tuple[Path, Path],
    out_dir: Path,
    marker: bytes,
    decoys: dict[str, Path],
) -> None:
    data, stream = sealed
    proc = _cli_decrypt(data, out_dir / "plain.bin", NAMED_ONLY)
    assert proc.stdin is not None
    feeder = _Feeder(stream, proc.stdin)
    try:
        _wait_until_written(proc, CAUGHT_AT)
        proc.kill()
    finally:
        _end(proc, feeder)
    # SIGKILL runs no handler: the temporary stays, until a later run sees it is stale.
    (left,) = _holding(out_dir, marker)
    assert Path(left).name.startswith(".plain.bin.glc-")
    old = time.time() - 2 * 3600
    os.utime(left, (old, old))
    # The next run writing into this directory (the default path, a small output).
    small = out_dir.parent / "small.txt"
    small.write_bytes(b"alice@example.com")
    res = subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data), "encrypt", *CTX,
         "-i", str(small), "-o", str(out_dir / "small.glc")],
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    assert _holding(out_dir, marker) == []
    assert sorted(os.listdir(out_dir)) == sorted(["small.glc", *(p.name for p in decoys.values())])
