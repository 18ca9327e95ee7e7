"""The hazmat module: NIST CAVP AES-256-GCM vectors through its AESGCM, interop with
`cryptography`, and the one raw-key export."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM as CryptographyAESGCM

from greenlang_crypto import _core as core
from greenlang_crypto import hazmat
from greenlang_crypto.exceptions import DecryptionError, InvalidArgumentError, InvalidKeyError
from greenlang_crypto.hazmat import AESGCM, export_key_bytes


def _vectors_dir() -> Path:
    import cryptography_vectors

    return Path(cryptography_vectors.__file__).parent / "ciphers" / "AES" / "GCM"


def _load(name: str) -> Iterator[dict[str, str]]:
    """Parses a CAVP .rsp file into dicts of its fields (FAIL marks a rejected decrypt)."""
    current: dict[str, str] = {}
    for raw in (_vectors_dir() / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("["):
            continue
        if line == "FAIL":
            current["FAIL"] = "1"
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key == "Count" and current:
            yield current
            current = {}
        current[key] = value
    if current:
        yield current


def _usable(v: dict[str, str]) -> bool:
    # Our AESGCM takes only 96-bit nonces and 128-bit tags, by design.
    return len(v["IV"]) == 24 and len(v["Tag"]) == 32


def test_encrypt_vectors() -> None:
    n = 0
    for v in _load("gcmEncryptExtIV256.rsp"):
        if not _usable(v):
            continue
        key, iv = bytes.fromhex(v["Key"]), bytes.fromhex(v["IV"])
        pt, aad = bytes.fromhex(v["PT"]), bytes.fromhex(v["AAD"])
        expected = bytes.fromhex(v["CT"]) + bytes.fromhex(v["Tag"])
        a = AESGCM(key)
        assert a.encrypt(iv, pt, aad or None) == expected
        assert a.decrypt(iv, expected, aad) == pt
        n += 1
    assert n > 300


def test_decrypt_vectors_including_failures() -> None:
    ok = fail = 0
    for v in _load("gcmDecrypt256.rsp"):
        if not _usable(v):
            continue
        key, iv = bytes.fromhex(v["Key"]), bytes.fromhex(v["IV"])
        aad = bytes.fromhex(v["AAD"])
        data = bytes.fromhex(v["CT"]) + bytes.fromhex(v["Tag"])
        a = AESGCM(key)
        if "FAIL" in v:
            with pytest.raises(DecryptionError):
                a.decrypt(iv, data, aad)
            fail += 1
        else:
            assert a.decrypt(iv, data, aad) == bytes.fromhex(v["PT"])
            ok += 1
    assert ok > 100 and fail > 50


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, 70_000])
def test_interop_both_directions(size: int) -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    pt, aad = os.urandom(size), os.urandom(size % 37)
    ours, theirs = AESGCM(key), CryptographyAESGCM(key)
    assert theirs.decrypt(nonce, ours.encrypt(nonce, pt, aad), aad) == pt
    assert ours.decrypt(nonce, theirs.encrypt(nonce, pt, aad), aad) == pt
    assert ours.encrypt(nonce, pt, None) == theirs.encrypt(nonce, pt, None)


def test_dropping_aad_is_caught() -> None:
    # A decrypt path that forgot the AAD must fail against an AAD-bearing ciphertext.
    key, nonce = os.urandom(32), os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, b"data", b"bound")
    with pytest.raises(DecryptionError):
        AESGCM(key).decrypt(nonce, ct, None)


@pytest.mark.parametrize("n", [0, 8, 11, 13, 16])
def test_bad_nonce_lengths(n: int) -> None:
    a = AESGCM(os.urandom(32))
    with pytest.raises(InvalidArgumentError, match="12 bytes"):
        a.encrypt(os.urandom(n), b"x", None)
    with pytest.raises(InvalidArgumentError):
        a.decrypt(os.urandom(n), b"x" * 32, None)


@pytest.mark.parametrize("n", [0, 16, 24, 31, 33])
def test_bad_key_lengths(n: int) -> None:
    with pytest.raises(InvalidKeyError):
        AESGCM(os.urandom(n))


def test_short_ciphertext_is_auth_failure() -> None:
    with pytest.raises(DecryptionError):
        AESGCM(os.urandom(32)).decrypt(os.urandom(12), b"short", None)


def test_the_module_offers_exactly_the_raw_primitives() -> None:
    assert sorted(hazmat.__all__) == ["AESGCM", "export_key_bytes"]
    assert hazmat.AESGCM is core.AESGCM


def test_export_key_bytes_returns_the_key_a_data_key_was_made_from() -> None:
    raw = os.urandom(32)
    key = core.DataKey.from_bytes(raw)
    assert export_key_bytes(key) == raw
    # The exported key is the AES key itself: it opens what the raw primitive sealed.
    nonce = os.urandom(12)
    sealed = CryptographyAESGCM(raw).encrypt(nonce, b"interop", None)
    assert AESGCM(export_key_bytes(key)).decrypt(nonce, sealed, None) == b"interop"


@pytest.mark.parametrize("not_a_key", [b"\x00" * 32, "key", None])
def test_export_key_bytes_takes_only_a_data_key(not_a_key: object) -> None:
    with pytest.raises(TypeError):
        export_key_bytes(not_a_key)  # type: ignore[arg-type]
