"""The column types' per-value paths never serve a key the service has let go of.

The bind and result processors of an encrypted column seal and open in one Rust call through
the DEK cache, whose repeated hits come from a per-thread memo of the last hit. These tests
warm that memo through the processors, then expire, retire or disable the key, and check that
the next value through the same processor does not use it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table
from sqlalchemy.dialects import sqlite

from greenlang_crypto._core import parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import KeyRetiredError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EncryptedString

DIALECT = sqlite.dialect()


def _service(tmp_path: Path, **config: Any) -> EncryptionService:
    d = tmp_path / "keys"
    d.mkdir(exist_ok=True)
    if not LocalKeyProvider(d).versions():
        LocalKeyProvider(d).create_master_key()
    return EncryptionService(EncryptionServiceConfig(data_dir=d, **config))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EncryptionService]:
    svc = _service(tmp_path)
    yield svc
    svc.close()


def _processors(svc: EncryptionService) -> tuple[Any, Any]:
    table = Table(
        "memo_users",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("email", EncryptedString(svc, data_class="pii", tenant_id="t1")),
    )
    impl = table.c.email.type.dialect_impl(DIALECT)
    return impl.bind_processor(DIALECT), impl.result_processor(DIALECT, None)


def _dek(envelope: bytes) -> tuple[int, int | None]:
    header = parse_envelope(envelope)
    return header.key_version, header.dek_id


def _misses(svc: EncryptionService, op: str) -> int:
    return svc.cache_stats()[op]["misses"]


def test_disable_cached_keys_reaches_the_memoized_paths(service: EncryptionService) -> None:
    encrypt, decrypt = _processors(service)
    first = [encrypt(f"v{i}@example.com") for i in range(5)]
    assert len({_dek(e) for e in first}) == 1, "one DEK, served from the cache"
    assert [decrypt(e) for e in first] == [f"v{i}@example.com" for i in range(5)]
    dec_misses = _misses(service, "decrypt")
    service.disable_cached_keys()
    after = encrypt("after@example.com")
    assert _dek(after) != _dek(first[0]), "a disabled DEK must not seal again"
    # The memoized decryption key is gone too: the next open fetches the key again.
    assert decrypt(first[0]) == "v0@example.com"
    refetched = _misses(service, "decrypt")
    assert refetched > dec_misses
    assert decrypt(first[1]) == "v1@example.com"
    assert _misses(service, "decrypt") == refetched, "then cached again"


def test_retirement_reaches_the_memoized_paths(service: EncryptionService) -> None:
    encrypt, decrypt = _processors(service)
    old = encrypt("old@example.com")
    assert decrypt(old) == "old@example.com"
    assert _dek(old)[0] == 1
    service.rotate()
    new = encrypt("new@example.com")
    assert _dek(new)[0] == 2, "after a rotation the same processor seals under the new version"
    assert decrypt(old) == "old@example.com"  # the old version still decrypts, memoized
    service.retire_versions_below(2, delete_stored_deks=True, force=True)
    with pytest.raises(KeyRetiredError):
        decrypt(old)
    assert decrypt(new) == "new@example.com"


def test_ttl_reaches_the_memoized_paths(tmp_path: Path) -> None:
    svc = _service(tmp_path, cache_ttl_seconds=0.3)
    try:
        encrypt, decrypt = _processors(svc)
        first = encrypt("a@example.com")
        assert _dek(encrypt("b@example.com")) == _dek(first)
        assert decrypt(first) == "a@example.com"
        dec_misses = _misses(svc, "decrypt")
        time.sleep(0.45)
        later = encrypt("c@example.com")
        assert _dek(later) != _dek(first), "an expired DEK must not seal again"
        assert decrypt(first) == "a@example.com"
        assert _misses(svc, "decrypt") > dec_misses, "an expired key is fetched again"
    finally:
        svc.close()


@pytest.mark.parametrize("length", [0, 1, 127, 128, 129, 5000])
def test_text_values_of_every_size_round_trip(service: EncryptionService, length: int) -> None:
    # Short values are opened into a stack buffer, longer ones into a per-thread scratch
    # buffer: both sides of the boundary, with multi-byte characters straddling it.
    encrypt, decrypt = _processors(service)
    value = ("é" * length)[:length] if length % 2 else "a" * length
    assert decrypt(encrypt(value)) == value
    assert decrypt(encrypt(value)) == value  # memoized hit


@pytest.mark.parametrize("length", [1, 128, 129, 300])
def test_non_utf8_plaintext_fails_opaquely(service: EncryptionService, length: int) -> None:
    from greenlang_crypto.context import EncryptionContext
    from greenlang_crypto.exceptions import DecryptionError

    _, decrypt = _processors(service)
    ctx = EncryptionContext(tenant_id="t1", data_class="pii")
    bad = service.encrypt(b"\xff" * length, ctx, associated_data=b"memo_users|email")
    with pytest.raises(DecryptionError):
        decrypt(bad)
