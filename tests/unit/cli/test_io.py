"""Inputs and outputs of the CLI (:mod:`greenlang_crypto.cli._io`)."""

from __future__ import annotations

import errno
import io
import stat
from pathlib import Path

import pytest

from greenlang_crypto.cli import _io
from greenlang_crypto.exceptions import PayloadTooLargeError


def test_read_input_refuses_a_file_over_the_limit(tmp_path: Path) -> None:
    f = tmp_path / "in.bin"
    f.write_bytes(b"x" * 10)
    assert _io.read_input(str(f), 10) == b"x" * 10
    with pytest.raises(PayloadTooLargeError, match="10 bytes, more than 9"):
        _io.read_input(str(f), 9)


def test_read_input_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    class _Stdin:
        buffer = io.BytesIO(b"12345")

    monkeypatch.setattr("sys.stdin", _Stdin())
    with pytest.raises(PayloadTooLargeError, match="larger than 4 bytes"):
        _io.read_input("-", 4)
    _Stdin.buffer = io.BytesIO(b"1234")
    assert _io.read_input(None, 4) == b"1234"


def test_an_unreadable_input_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(_io.UsageError, match=f"cannot read {missing}: No such file"):
        _io.read_input(str(missing), 10)
    err = _io.unreadable(None, OSError(errno.EIO, "Input/output error"))
    assert str(err) == "cannot read standard input: Input/output error"


def test_write_output_writes_a_private_file(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    _io.write_output(str(out), b"secret")
    assert out.read_bytes() == b"secret"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    _io.write_output(str(out), b"other", mode=0o640)
    assert out.read_bytes() == b"other"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_prefixed_replays_its_head_then_reads_on() -> None:
    src = _io.Prefixed(b"abc", io.BytesIO(b"defg"))
    buf = bytearray(2)
    got = b""
    while n := src.readinto(buf):
        got += bytes(buf[:n])
    assert got == b"abcdefg"


def test_open_input_names_the_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    with pytest.raises(_io.UsageError, match=str(missing)), _io.open_input(str(missing)):
        pass


def test_no_progress_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    with _io.byte_progress(100, "encrypt") as bar:
        assert bar is None
