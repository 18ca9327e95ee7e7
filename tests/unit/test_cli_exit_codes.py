"""Exit codes and one-line errors of the CLI when files fail under it.

Real failures only: a 1 MiB tmpfs that fills up, a file whose reads fail with EIO, a
character device as the output, a real SIGINT. Most runs call ``cli.main`` in-process (so an
untyped exception would surface here as the test's own error); one full-disk run and the
interrupt go through a real ``python -m greenlang_crypto`` process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from greenlang_crypto import cli

CTX = ["--tenant", "acme", "--data-class", "pii"]
# Larger than the tmpfs below, so the write runs out of space part-way through.
BIG = 2 * 1024 * 1024

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs and mknod need root (CI runs as root)"
)


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    """The single ``error:`` line that ``err`` must consist of."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


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


def _fill(directory: Path) -> Path:
    """Writes a filler file until the file system is full; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, chunk)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize(
    "mode", ["stream", "envelope", "decrypt"], ids=["encrypt", "encrypt-envelope", "decrypt"]
)
def test_full_disk_is_an_output_error_and_leaves_nothing(
    data: Path,
    big_input: Path,
    tiny_fs: Path,
    tmp_path: Path,
    mode: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tiny_fs / "out.bin"
    base = ["--data-dir", str(data)]
    if mode == "decrypt":
        sealed = tmp_path / "in.glc"
        assert cli.main([*base, "encrypt", *CTX, "-i", str(big_input), "-o", str(sealed)]) == 0
        argv = [*base, "decrypt", *CTX, "-i", str(sealed), "-o", str(out)]
    else:
        extra = ["--envelope"] if mode == "envelope" else []
        argv = [*base, "encrypt", *CTX, *extra, "-i", str(big_input), "-o", str(out)]
    code, err = _main(capsys, *argv)
    line = _one_error_line(err)
    assert code == 2
    assert line.startswith("error: OutputError: cannot write") and str(out) in line, line
    assert "No space left on device" in line
    # Nothing under the output name, and no temporary file left beside it.
    assert list(tiny_fs.iterdir()) == []


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


def test_a_replaced_output_stays_whole_when_the_disk_fills(
    data: Path, big_input: Path, tiny_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tiny_fs / "out.glc"
    out.write_bytes(b"previous contents")
    code, err = _main(
        capsys, "--data-dir", str(data), "encrypt", *CTX, "-i", str(big_input), "-o", str(out)
    )
    assert code == 2 and "OutputError" in _one_error_line(err)
    assert out.read_bytes() == b"previous contents"
    assert [p.name for p in tiny_fs.iterdir()] == ["out.glc"]


def test_missing_and_unreadable_inputs_are_usage_errors(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.bin"
    base = ["--data-dir", str(data)]
    missing = tmp_path / "absent.bin"
    for command in ("encrypt", "decrypt"):
        code, err = _main(capsys, *base, command, *CTX, "-i", str(missing), "-o", str(out))
        line = _one_error_line(err)
        assert code == 2 and f"cannot read {missing}" in line, line
    # Opening succeeds and the first read fails (EIO: address 0 of this process is never
    # mapped): the failure comes out of the stream code, not out of open().
    code, err = _main(capsys, *base, "decrypt", *CTX, "-i", "/proc/self/mem", "-o", str(out))
    line = _one_error_line(err)
    assert code == 2 and line == "error: cannot read /proc/self/mem: Input/output error", line
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@needs_root
def test_a_device_output_is_written_in_place_not_replaced(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"alice@example.com")
    dev = tmp_path / "nulldev"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for extra in ([], ["--envelope"]):
        code, err = _main(
            capsys, "--data-dir", str(data), "encrypt", *CTX, *extra, "-i", str(src),
            "-o", str(dev),
        )  # fmt: skip
        assert code == 0, err
        assert stat.S_ISCHR(dev.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "in.txt", "nulldev"]


def test_an_output_directory_is_an_output_error(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"alice@example.com")
    code, err = _main(
        capsys, "--data-dir", str(data), "encrypt", *CTX, "-i", str(src), "-o", str(tmp_path)
    )
    assert code == 2
    assert _one_error_line(err).startswith(f"error: OutputError: cannot write {tmp_path}")


def test_audit_sink_on_a_full_disk_fails_closed_with_exit_3(
    data: Path, tiny_fs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tiny_fs / "audit.jsonl"
    monkeypatch.setenv("GLC_AUDIT_URL", f"jsonl://{log}")
    base = ["--data-dir", str(data)]
    assert _main(capsys, *base, "keys", "rotate")[0] == 0
    filler = _fill(tiny_fs)
    code, err = _main(capsys, *base, "keys", "rotate")
    assert code == 3, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: AuditSinkUnavailableError:"), err
    # Failed closed: the keyring did not change.
    capsys.readouterr()
    assert cli.main([*base, "keys", "list", "--json"]) == 0
    assert '"version": 3' not in capsys.readouterr().out
    # With room again the log goes on: no line cut short was left at its end.
    filler.unlink()
    assert _main(capsys, *base, "keys", "rotate")[0] == 0
    code, err = _main(capsys, *base, "audit", "verify")
    assert code == 0, err


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
