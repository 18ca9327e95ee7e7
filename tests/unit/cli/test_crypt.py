"""``encrypt`` and ``decrypt`` in process (:mod:`greenlang_crypto.cli.crypt`).

The same commands in a real process, on large objects and terminals, are in
``tests/integration/cli/test_crypt_streams.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from greenlang_crypto.cli._io import UsageError
from greenlang_crypto.cli.crypt import file_mode, parse_range, thread_count
from tests.clirun import RunCli

CTX = ["--tenant", "acme", "--data-class", "pii"]


def test_thread_count_accepts_1_to_64() -> None:
    assert [thread_count(t) for t in ("1", "8", "64")] == [1, 8, 64]
    for bad in ("0", "65", "-1", "two", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            thread_count(bad)


def test_file_mode_is_octal_permission_bits() -> None:
    assert file_mode("640") == 0o640
    assert file_mode("0o600") == 0o600
    assert file_mode("0") == 0
    for bad in ("9", "rw", "1777", "0o4755"):
        with pytest.raises(argparse.ArgumentTypeError):
            file_mode(bad)


def test_parse_range() -> None:
    assert parse_range(None) == (0, None)
    assert parse_range("5:9") == (5, 9)
    assert parse_range(":7") == (0, 7)
    assert parse_range("100:") == (100, None)
    assert parse_range("0:0") == (0, 0)
    for bad in ("5", "x:y", "9:3", "-1:4"):
        with pytest.raises(UsageError, match="--range"):
            parse_range(bad)


@pytest.mark.parametrize("single", [False, True], ids=["stream", "envelope"])
def test_files_round_trip_in_process(run_cli: RunCli, tmp_path: Path, single: bool) -> None:
    pt = os.urandom(70_000)
    src, enc, out = tmp_path / "in.bin", tmp_path / "in.glc", tmp_path / "out.bin"
    src.write_bytes(pt)
    extra = ["--envelope"] if single else []
    code, _, err = run_cli("encrypt", *CTX, *extra, "-i", str(src), "-o", str(enc))
    assert code == 0, err
    assert enc.read_bytes()[:1] == (b"\xfa" if single else b"\xfb")
    code, _, err = run_cli("decrypt", *CTX, "-i", str(enc), "-o", str(out))
    assert code == 0, err
    assert out.read_bytes() == pt
    # Another context does not open it, and leaves no output behind.
    other = tmp_path / "other.bin"
    code, _, err = run_cli(
        "decrypt", "--tenant", "evil", "--data-class", "pii", "-i", str(enc), "-o", str(other)
    )
    assert code == 2 and "DecryptionError" in err
    assert not other.exists()


def test_a_range_of_a_stream(run_cli: RunCli, tmp_path: Path) -> None:
    pt = os.urandom(3 * 65536 + 11)
    src, enc, out = tmp_path / "in.bin", tmp_path / "in.glc", tmp_path / "out.bin"
    src.write_bytes(pt)
    seg = ["--segment-size", "65536"]
    assert run_cli("encrypt", *CTX, *seg, "-i", str(src), "-o", str(enc))[0] == 0
    code, _, err = run_cli(
        "decrypt", *CTX, "--range", "65530:70000", "-i", str(enc), "-o", str(out)
    )
    assert code == 0, err
    assert out.read_bytes() == pt[65530:70000]
    code, _, err = run_cli("decrypt", *CTX, "--range", "9:3", "-i", str(enc), "-o", str(out))
    assert code == 2 and "--range" in err


def test_decrypt_mode_sets_the_output_permissions(run_cli: RunCli, tmp_path: Path) -> None:
    src, enc, out = tmp_path / "in.txt", tmp_path / "in.glc", tmp_path / "out.txt"
    src.write_bytes(b"alice@example.com")
    assert run_cli("encrypt", *CTX, "-i", str(src), "-o", str(enc))[0] == 0
    assert run_cli("decrypt", *CTX, "-i", str(enc), "-o", str(out), "--mode", "640")[0] == 0
    assert out.stat().st_mode & 0o777 == 0o640
    assert out.read_bytes() == b"alice@example.com"
