"""``greenlang-crypto init`` in process (:mod:`greenlang_crypto.cli.init`)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from greenlang_crypto import cli


def _init(capsys: pytest.CaptureFixture[str], data: Path) -> tuple[int, str, str]:
    code = cli.main(["--data-dir", str(data), "init"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_init_creates_then_finds_the_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    code, out, err = _init(capsys, data)
    assert code == 0, err
    assert out == (
        f"created the master key in {data} (mode 0600)\nkeyring ready: primary version 1\n"
    )
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert len(list((data / "master-keys").glob("master-v*.key"))) == 1
    # Nothing was left beside it under a temporary name.
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    code, out, _ = _init(capsys, data)
    assert code == 0
    assert out == f"already initialized: {data}\nkeyring ready: primary version 1\n"
    assert len(list((data / "master-keys").glob("master-v*.key"))) == 1


def test_a_foreign_non_empty_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    code, _, err = _init(capsys, data)
    assert code == 2
    assert "ConfigurationError" in err and "holds no master key" in err
    assert [p.name for p in data.iterdir()] == ["notes.txt"]


def test_an_unwritable_parent_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parent = tmp_path / "file"
    parent.write_text("a file, not a directory")
    code, _, err = _init(capsys, parent / "data")
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert parent.read_text() == "a file, not a directory"
