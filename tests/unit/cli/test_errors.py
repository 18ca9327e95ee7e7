"""Exit codes and one-line errors of the CLI (:mod:`greenlang_crypto.cli.errors`), in process.

Real failures only: a 1 MiB tmpfs that fills up, a file whose reads fail with EIO, a
character device as the output. The runs call ``cli.main`` in-process, so an untyped
exception would surface here as the test's own error; the runs through a real
``python -m greenlang_crypto`` process are in ``tests/integration/cli/test_errors.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from greenlang_crypto import cli
from greenlang_crypto.cli import errors
from greenlang_crypto.exceptions import (
    AuditSinkUnavailableError,
    ConfigurationError,
    KeyStoreUnavailableError,
    KmsUnavailableError,
    OutputError,
    UnavailableError,
)
from tests.clirun import one_error_line as _one_error_line

CTX = ["--tenant", "acme", "--data-class", "pii"]
# Larger than the tmpfs below, so the write runs out of space part-way through.
BIG = 2 * 1024 * 1024

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs and mknod need root (CI runs as root)"
)


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


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


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigurationError("x"), errors.EXIT_ERROR),
        (OutputError("x"), errors.EXIT_ERROR),
        (UnavailableError("x"), errors.EXIT_RETRY_LATER),
        (KeyStoreUnavailableError("x"), errors.EXIT_RETRY_LATER),
        (KmsUnavailableError("x"), errors.EXIT_RETRY_LATER),
        (AuditSinkUnavailableError("x"), errors.EXIT_RETRY_LATER),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_exit_code_tells_an_outage_from_an_error(error: Exception, code: int) -> None:
    assert errors.exit_code(error) == code  # type: ignore[arg-type]


def test_a_rejected_audit_record_is_no_outage() -> None:
    from greenlang_crypto.audit.sinks.base import AuditRecordRejectedError

    assert errors.exit_code(AuditRecordRejectedError("bad value")) == errors.EXIT_ERROR


def test_report_prints_the_class_and_one_line_only(capsys: pytest.CaptureFixture[str]) -> None:
    error = ConfigurationError("first line\n\n   second line  \n")
    error.__cause__ = RuntimeError("driver detail: secret")
    assert errors.report(error) == errors.EXIT_ERROR
    assert capsys.readouterr().err == "error: ConfigurationError: first line second line\n"
    assert errors.report(UnavailableError()) == errors.EXIT_RETRY_LATER
    assert capsys.readouterr().err == "error: UnavailableError\n"


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/x/out"),
            errors.EXIT_ERROR,
            "error: OutputError: cannot write /x/out: No space left on device",
        ),
        (
            BrokenPipeError(errno.EPIPE, "Broken pipe"),
            errors.EXIT_ERROR,
            "error: OutputError: cannot write Broken pipe",
        ),
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            errors.EXIT_RETRY_LATER,
            "error: UnavailableError: a service is unreachable (ConnectionRefusedError); "
            "retry later",
        ),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/in"),
            errors.EXIT_ERROR,
            "error: /x/in: No such file or directory",
        ),
    ],
    ids=["full-disk", "broken-pipe", "refused", "missing"],
)
def test_stray_os_errors_are_typed_by_their_errno(
    exc: OSError, code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert errors.stray_os_error(exc) == code
    assert capsys.readouterr().err == line + "\n"


def test_database_outage_types_only_operational_errors() -> None:
    outage = errors.database_outage(sqlite3.OperationalError("database is locked"))
    assert isinstance(outage, KeyStoreUnavailableError)
    assert "retry later" in str(outage) and "locked" not in str(outage)
    assert isinstance(outage.__cause__, sqlite3.OperationalError)
    assert errors.database_outage(sqlite3.IntegrityError("UNIQUE")) is None
    assert errors.database_outage(ValueError("x")) is None


def test_an_unexpected_exception_names_its_type_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(args: object) -> int:
        raise ValueError("secret value")

    monkeypatch.setattr(cli, "cmd_status", boom)
    assert cli.main(["status"]) == errors.EXIT_ERROR
    err = capsys.readouterr().err
    assert _one_error_line(err) == (
        "error: unexpected ValueError; rerun with --debug for the traceback"
    )


def test_an_interrupt_in_process_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_status", interrupted)
    assert cli.main(["status"]) == errors.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "error: interrupted\n"
