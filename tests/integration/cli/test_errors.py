"""Exit codes and one-line errors of the CLI in a real ``python -m greenlang_crypto`` process.

A full disk, a real SIGINT and a stdout nobody reads; the in-process runs of the same rules are
in ``tests/unit/cli/test_errors.py``.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from greenlang_crypto import cli
from tests.clirun import one_error_line as _one_error_line

CTX = ["--tenant", "acme", "--data-class", "pii"]
# Larger than the tmpfs, so the write runs out of space part-way through.
BIG = 2 * 1024 * 1024


@pytest.fixture
def data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = tmp_path / "data"
    assert cli.main(["--data-dir", str(d), "init"]) == 0
    capsys.readouterr()
    return d


@pytest.fixture
def big_input(tmp_path: Path) -> Path:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(BIG))
    return src


def test_full_disk_in_a_real_process(data: Path, big_input: Path, tiny_fs: Path) -> None:
    out = tiny_fs / "out.glc"
    res = subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data), "encrypt", *CTX,
         "-i", str(big_input), "-o", str(out)],
        capture_output=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "OutputError" in _one_error_line(err)
    assert list(tiny_fs.iterdir()) == []


def test_interrupt_exits_130_with_one_line(data: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root (CI runs as root)")
    # An endless input of our own (a zero device node), so the command is still working
    # when the signal comes, whatever the machine's speed.
    zero = tmp_path / "zerodev"
    os.mknod(zero, 0o444 | stat.S_IFCHR, os.makedev(1, 5))
    proc = subprocess.Popen(
        [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data), "encrypt", *CTX,
         "-i", str(zero)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        # Ciphertext on stdout: the command runs (past start-up, inside main()).
        assert len(proc.stdout.read(65536)) == 65536
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.decode() == "error: interrupted\n"


def test_a_closed_stdout_is_one_line_not_a_traceback(data: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(BIG))
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write fails with EPIPE
    try:
        res = subprocess.run(
            [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data), "encrypt",
             *CTX, "-i", str(src)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    err = res.stderr.decode()
    assert res.returncode == 2, err
    line = _one_error_line(err)
    assert line.startswith("error: OutputError: cannot write standard output"), line
    assert os.strerror(errno.EPIPE) in line
