"""Files the library creates (:mod:`greenlang_crypto._files`): private whatever the umask, key
directories checked, outputs and directories that appear whole or not at all."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext, _files
from greenlang_crypto._files import (
    atomic_directory,
    atomic_output,
    check_private_dir,
    ensure_private_dir,
    ensure_private_file,
    open_private_append,
    output_error,
    regular_file_size,
    sweep_stale_temporaries,
)
from greenlang_crypto.exceptions import ConfigurationError, OutputError
from greenlang_crypto.service import EncryptionService


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_embedded_default_is_private_under_umask_000(tmp_path: Path, open_umask: None) -> None:
    data = tmp_path / "a" / "data"
    svc = EncryptionService.init_local(data)
    svc.encrypt(b"x", EncryptionContext("t", "d"))
    svc.close()
    assert mode(data) == 0o700
    assert mode(data / "master-keys") == 0o700
    for f in data.rglob("*"):
        if f.is_file() and not f.name.endswith(".lock"):
            assert mode(f) == 0o600, f


def test_helpers_create_private_paths(tmp_path: Path, open_umask: None) -> None:
    d = ensure_private_dir(tmp_path / "x" / "y")
    assert mode(d) == 0o700 and mode(d.parent) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    ensure_private_dir(loose)
    assert mode(loose) == 0o700
    f = ensure_private_file(tmp_path / "z" / "db")
    assert mode(f) == 0o600
    f.chmod(0o644)
    ensure_private_file(f)
    assert mode(f) == 0o600
    fd = open_private_append(tmp_path / "log.jsonl")
    os.close(fd)
    assert mode(tmp_path / "log.jsonl") == 0o600


def test_a_writable_or_foreign_key_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    check_private_dir(d)
    d.chmod(0o770)
    with pytest.raises(ConfigurationError, match="writable by group or others"):
        check_private_dir(d)
    d.chmod(0o700)
    os.chown(d, 12345, -1)
    with pytest.raises(ConfigurationError, match="not owned"):
        check_private_dir(d)


def test_master_keys_in_a_group_writable_directory_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    EncryptionService.init_local(data).close()
    (data / "master-keys").chmod(0o775)
    svc = EncryptionService.init_local(data)
    with pytest.raises(ConfigurationError):
        svc.encrypt(b"x", EncryptionContext("t", "d"))
    svc.close()


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named-temporary"])
def test_an_atomic_output_appears_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpfile: bool
) -> None:
    monkeypatch.setattr(_files, "USE_TMPFILE", tmpfile)
    out = tmp_path / "out.bin"
    with atomic_output(out, mode=0o640) as f:
        f.write(b"first")
        assert not out.exists()
    assert out.read_bytes() == b"first" and mode(out) == 0o640
    with pytest.raises(RuntimeError), atomic_output(out) as f:
        f.write(b"half")
        raise RuntimeError("the writer failed")
    assert out.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_an_output_into_a_missing_directory_is_an_output_error(tmp_path: Path) -> None:
    target = tmp_path / "no" / "out"
    with pytest.raises(OutputError, match=f"cannot write {target}"), atomic_output(target):
        pass
    assert not (tmp_path / "no").exists()


def test_output_error_names_the_path_and_reason_only() -> None:
    err = output_error("/x/out", OSError(28, "No space left on device"))
    assert str(err) == "cannot write /x/out: No space left on device"
    assert str(output_error("/x/out", OSError())) == "cannot write /x/out: OSError"


def test_regular_file_size_is_what_is_left_to_read(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"0123456789")
    with f.open("rb") as src:
        assert regular_file_size(src) == 10
        src.read(4)
        assert regular_file_size(src) == 6
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(read_end, "rb", closefd=False) as pipe:
            assert regular_file_size(pipe) is None
    finally:
        os.close(read_end)
        os.close(write_end)
    assert regular_file_size(object()) is None


def test_an_atomic_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "built"
    with atomic_directory(target) as building:
        (building / "a").write_text("x")
        assert not target.exists()
    assert (target / "a").read_text() == "x" and mode(target) == 0o700
    other = tmp_path / "failed"
    with pytest.raises(RuntimeError), atomic_directory(other) as building:
        (building / "a").write_text("x")
        raise RuntimeError("half built")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built"]
    # Another process finished first: its directory is kept.
    with pytest.raises(FileExistsError), atomic_directory(target) as building:
        (building / "b").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["a"]


def test_the_sweep_removes_only_our_old_temporaries(tmp_path: Path) -> None:
    ours = tmp_path / ".out.bin.glc-123-0123456789abcdef.tmp"
    ours_dir = tmp_path / ".data.glc-init-123-0123456789abcdef"
    fresh = tmp_path / ".new.glc-124-0123456789abcdef.tmp"
    theirs = tmp_path / ".out.bin.tmp"
    for p in (ours, fresh, theirs):
        p.write_bytes(b"x")
    ours_dir.mkdir()
    for p in (ours, ours_dir, theirs):
        os.utime(p, (0, 0))
    removed = sweep_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([ours.name, ours_dir.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, theirs.name])


def test_regular_file_size_counts_from_the_position(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"z" * 100)
    with open(path, "rb") as f:
        assert regular_file_size(f) == 100
        f.seek(30)
        assert regular_file_size(f) == 70
        f.seek(500)
        assert regular_file_size(f) == 0


def test_regular_file_size_is_none_for_what_is_not_a_regular_file() -> None:
    assert regular_file_size(io.BytesIO(b"abc")) is None
    assert regular_file_size(object()) is None
    r, w = os.pipe()
    try:
        with open(r, "rb", closefd=False) as pipe:
            assert regular_file_size(pipe) is None
    finally:
        os.close(r)
        os.close(w)


def test_create_once_publishes_whole_and_never_overwrites(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from greenlang_crypto._files import create_once

    target = tmp_path / "secret"
    contenders = [bytes([i]) * 64 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda data: create_once(target, data), contenders))
    assert won.count(True) == 1
    assert target.read_bytes() == contenders[won.index(True)]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert create_once(target, b"later") is False
    assert target.read_bytes() == contenders[won.index(True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]  # no temporaries left
