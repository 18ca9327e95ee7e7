"""Master key creation of the local provider: a key file, once named, is never written over.

Several creators share one directory here the way several processes do (each provider object
has its own lock, like a separate process), and every key a creator was handed must still be
on disk under its id afterwards.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from greenlang_crypto import EncryptionContext
from greenlang_crypto.providers.base import KeyLimits
from greenlang_crypto.providers.local import LocalKeyProvider

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
