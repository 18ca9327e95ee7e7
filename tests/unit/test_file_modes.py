"""Files the library creates are private whatever the umask; key directories are checked."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto._files import (
    check_private_dir,
    ensure_private_dir,
    ensure_private_file,
    open_private_append,
)
from greenlang_crypto.exceptions import ConfigurationError
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
