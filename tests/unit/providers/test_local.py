"""The local provider: master key files, wrapping bound to key id and context, typed errors.

Master key creation: a key file, once named, is never written over. Several creators share one
directory here the way several processes do (each provider object has its own lock, like a
separate process), and every key a creator was handed must still be on disk under its id
afterwards.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto._core import export_key_bytes
from greenlang_crypto.exceptions import (
    ConfigurationError,
    DecryptionError,
    KeyUsageExceededError,
    KmsAccessDeniedError,
)
from greenlang_crypto.providers.base import KeyLimits, KeyProvider
from greenlang_crypto.providers.local import LocalKeyProvider
from tests._forking import fork

CTX = EncryptionContext(tenant_id="t1", data_class="pii")
CREATORS = 6
KEYS_EACH = 15


def test_concurrent_creators_never_share_or_replace_a_key(tmp_path: Path) -> None:
    LocalKeyProvider(tmp_path).create_master_key()
    start = threading.Barrier(CREATORS)
    made: list[list[tuple[str, bytes]]] = [[] for _ in range(CREATORS)]
    errors: list[BaseException] = []

    def create(slot: int) -> None:
        provider = LocalKeyProvider(tmp_path)
        try:
            start.wait()
            for _ in range(KEYS_EACH):
                key_id = provider.create_master_key()
                # Wrapped under the key this creator holds; it opens later only if the file
                # under key_id still holds that key.
                wrapped = provider.generate_data_key(key_id, CTX, KeyLimits()).wrapped
                made[slot].append((key_id, wrapped))
        except BaseException as exc:  # a thread's exception is only printed: keep it for the test
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(CREATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    ids = [key_id for per in made for key_id, _ in per]
    assert len(ids) == CREATORS * KEYS_EACH
    assert len(set(ids)) == len(ids), "two creators were handed the same key id"
    fresh = LocalKeyProvider(tmp_path)
    for key_id, wrapped in (pair for per in made for pair in per):
        fresh.decrypt_data_key(key_id, wrapped, CTX, KeyLimits())
    assert fresh.versions() == list(range(1, CREATORS * KEYS_EACH + 2))
    # Nothing but key files is left behind, each a single name for its data.
    names = sorted(os.listdir(tmp_path / "master-keys"))
    assert names == sorted(f"master-v{v}.key" for v in fresh.versions())
    for name in names:
        st = (tmp_path / "master-keys" / name).stat()
        assert st.st_nlink == 1 and st.st_mode & 0o777 == 0o600, name


def test_a_taken_name_is_skipped_and_left_untouched(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path)
    first = provider.create_master_key()
    keys = tmp_path / "master-keys"
    # Left behind by a creator that died half-way (old releases wrote master-vN.tmp): it
    # must neither block the next key nor be taken for one.
    stale = keys / "master-v2.tmp"
    stale.write_bytes(b"half-written")
    second = provider.create_master_key()
    assert (first, second) == ("local:master-v1", "local:master-v2")
    assert stale.read_bytes() == b"half-written"
    # The next number already has a key file (another creator's): its file and inode stay
    # as they were and a different number is used.
    taken = keys / "master-v3.key"
    fd = os.open(taken, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, bytes(range(32)))
    os.close(fd)
    before = taken.stat()
    third = provider.create_master_key()
    assert third == "local:master-v4"
    after = taken.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert taken.read_bytes() == bytes(range(32))
    wrapped = provider.generate_data_key(third, CTX, KeyLimits()).wrapped
    LocalKeyProvider(tmp_path).decrypt_data_key(third, wrapped, CTX, KeyLimits())


def test_no_master_key_is_a_configuration_error(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path / "empty")
    assert provider.versions() == []
    with pytest.raises(ConfigurationError, match="greenlang-crypto init"):
        provider.current_key_id()
    health = provider.health()
    assert not health.ok and health.detail == "ConfigurationError"


def test_versions_and_current_key(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path)
    assert isinstance(provider, KeyProvider)
    first = provider.create_master_key()
    second = provider.create_master_key()
    assert (first, second) == (LocalKeyProvider.key_id_for(1), LocalKeyProvider.key_id_for(2))
    assert provider.versions() == [1, 2]
    assert provider.current_key_id() == "local:master-v2"
    keys = tmp_path / "master-keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    # Files that are not key files are not versions.
    (keys / "notes.txt").write_text("x")
    (keys / "master-v9.key.bak").write_bytes(b"x")
    assert LocalKeyProvider(tmp_path).versions() == [1, 2]
    health = provider.health()
    assert health.ok and "2 master key version" in health.detail


def test_wrapped_dek_round_trip_and_limits(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path)
    key_id = provider.create_master_key()
    generated = provider.generate_data_key(key_id, CTX, KeyLimits(max_messages=2))
    assert generated.key_id == key_id
    assert generated.key.max_messages == 2
    sealed = generated.key.seal(b"value")
    # Another provider object (another process) unwraps the same DEK with its own budget.
    dek = LocalKeyProvider(tmp_path).decrypt_data_key(
        key_id, generated.wrapped, CTX, KeyLimits(max_messages=1)
    )
    assert dek.fingerprint == generated.key.fingerprint
    assert dek.open(sealed) == b"value"
    assert dek.max_messages == 1
    dek.seal(b"one")
    with pytest.raises(KeyUsageExceededError):
        dek.seal(b"two")


def test_unwrap_needs_the_same_key_id_context_and_bytes(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path)
    first = provider.create_master_key()
    second = provider.create_master_key()
    wrapped = provider.generate_data_key(first, CTX, KeyLimits()).wrapped
    flipped = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    for key_id, blob, ctx in (
        (first, wrapped, EncryptionContext("t2", "pii")),
        (first, wrapped, EncryptionContext("t1", "pii", {"purpose": "x"})),
        (second, wrapped, CTX),
        (first, flipped, CTX),
        (first, wrapped[:-1], CTX),
        (first, b"", CTX),
    ):
        # One opaque error whatever differed: no oracle on which part was wrong.
        with pytest.raises(DecryptionError) as info:
            provider.decrypt_data_key(key_id, blob, ctx, KeyLimits())
        assert str(info.value) == str(DecryptionError())


@pytest.mark.parametrize(
    "key_id", ["local:master-v", "local:master-vx", "kms:master-v1", "master-v1", "", "local:../x"]
)
def test_unknown_key_ids_are_refused(tmp_path: Path, key_id: str) -> None:
    provider = LocalKeyProvider(tmp_path)
    provider.create_master_key()
    with pytest.raises(KmsAccessDeniedError):
        provider.generate_data_key(key_id, CTX, KeyLimits())


def test_a_missing_version_is_not_found(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path)
    provider.create_master_key()
    with pytest.raises(KmsAccessDeniedError, match="not found") as info:
        provider.generate_data_key("local:master-v7", CTX, KeyLimits())
    assert info.value.code == "NotFoundException"


def test_rewrap_moves_a_dek_to_another_master_key(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path)
    old = provider.create_master_key()
    generated = provider.generate_data_key(old, CTX, KeyLimits())
    new = provider.create_master_key()
    rewrapped = provider.reencrypt_data_key(old, generated.wrapped, new, CTX)
    assert rewrapped != generated.wrapped
    dek = provider.decrypt_data_key(new, rewrapped, CTX, KeyLimits())
    assert dek.fingerprint == generated.key.fingerprint
    with pytest.raises(DecryptionError):
        provider.decrypt_data_key(old, rewrapped, CTX, KeyLimits())
    # The context still binds: a rewrap under the wrong context fails, nothing is returned.
    with pytest.raises(DecryptionError):
        provider.reencrypt_data_key(old, generated.wrapped, new, EncryptionContext("t2", "pii"))


def test_key_files_readable_by_others_are_refused(tmp_path: Path) -> None:
    LocalKeyProvider(tmp_path).create_master_key()
    path = tmp_path / "master-keys" / "master-v1.key"
    path.chmod(0o640)
    provider = LocalKeyProvider(tmp_path)
    with pytest.raises(ConfigurationError, match="must not be readable"):
        provider.generate_data_key("local:master-v1", CTX, KeyLimits())
    assert not provider.health().ok
    path.chmod(0o600)
    assert provider.health().ok


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    LocalKeyProvider(tmp_path).create_master_key()
    (tmp_path / "master-keys").chmod(0o770)
    with pytest.raises(ConfigurationError, match="writable by group or others"):
        LocalKeyProvider(tmp_path).generate_data_key("local:master-v1", CTX, KeyLimits())


def test_a_damaged_key_file_is_refused(tmp_path: Path) -> None:
    LocalKeyProvider(tmp_path).create_master_key()
    path = tmp_path / "master-keys" / "master-v1.key"
    path.write_bytes(b"short")
    with pytest.raises(ValueError):
        LocalKeyProvider(tmp_path).generate_data_key("local:master-v1", CTX, KeyLimits())


def test_no_key_bytes_in_repr_or_results(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path)
    key_id = provider.create_master_key()
    generated = provider.generate_data_key(key_id, CTX, KeyLimits())
    master = (tmp_path / "master-keys" / "master-v1.key").read_bytes()
    dek = export_key_bytes(generated.key)
    text = repr(provider) + repr(generated) + repr(generated.key) + repr(provider.health())
    for secret in (master, dek, generated.wrapped):
        assert secret.hex() not in text and repr(secret) not in text
    assert "versions=[1]" in repr(provider)


def test_a_forked_child_creates_keys_with_its_own_lock(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path)
    provider.create_master_key()
    # A lock held in the parent at fork time must not be held in the child.
    with provider._lock:
        result = fork(provider.create_master_key)
    assert result() == "local:master-v2"
    assert provider.versions() == [1, 2]
