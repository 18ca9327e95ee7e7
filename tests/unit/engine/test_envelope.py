from __future__ import annotations

from pathlib import Path

import pytest

from greenlang_crypto import parse_envelope
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.service import EncryptionService, KeyReference

from .conftest import CTX


def test_key_references_take_the_enum_or_its_string(svc: EncryptionService) -> None:
    for reference in (*KeyReference, "stored", "inline", "branch"):
        envelope = svc.encrypt(b"v", CTX, key_reference=reference)
        assert parse_envelope(envelope).kind == str(reference)
        assert svc.decrypt(envelope, CTX) == b"v"
    batch = svc.encrypt_batch([b"a", b"b"], CTX, key_reference=KeyReference.INLINE)
    assert svc.decrypt_batch(batch, CTX) == [b"a", b"b"]
    with pytest.raises(InvalidArgumentError):
        svc.encrypt(b"v", CTX, key_reference="nowhere")


def test_the_facade_calls_the_role_directly(svc: EncryptionService) -> None:
    # No hop through the facade: the instance holds the envelope role's bound methods.
    assert type(svc.encrypt.__self__).__name__ == "Envelope"
    assert svc.encrypt.__self__ is svc.decrypt.__self__
    assert "DEK bound to" in (EncryptionService.encrypt.__doc__ or "")


def test_a_column_sealer_follows_a_rotation(svc: EncryptionService) -> None:
    seal = svc.value_encryptor(CTX)
    assert parse_envelope(seal(b"a")).key_version == 1
    svc.rotate()
    assert parse_envelope(seal(b"b")).key_version == 2
    assert svc.decrypt(seal(b"c"), CTX) == b"c"
    assert seal(None) is None
    opened = svc.value_decryptor(CTX, text=True)
    assert opened(svc.encrypt_str("é", CTX)) == "é"


def test_a_forged_stored_reference_is_an_opaque_decryption_error(svc: EncryptionService) -> None:
    from greenlang_crypto.exceptions import DecryptionError, KeyNotFoundError

    envelope = bytearray(svc.encrypt(b"v", CTX, key_reference="stored"))
    dek_id = parse_envelope(bytes(envelope)).dek_id
    assert dek_id is not None
    at = bytes(envelope).index(dek_id.to_bytes(8, "big"))
    for forged in (dek_id + 1000, 2**63 + 5):
        envelope[at : at + 8] = forged.to_bytes(8, "big")
        with pytest.raises(KeyNotFoundError) as info:
            svc.decrypt(bytes(envelope), CTX)
        # A DecryptionError with the same text: no id, nothing to tell it from tampering.
        assert isinstance(info.value, DecryptionError)
        assert str(info.value) == str(DecryptionError())
        assert str(forged) not in str(info.value)


class _Redis:
    """GET / SET / DELETE on a dict, as the shared key cache uses redis-py."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, name: str) -> bytes | None:
        return self.data.get(name)

    def set(self, name: str, value: str, *, px: int) -> bool:
        self.data[name] = value.encode()
        return True

    def delete(self, *names: str) -> int:
        return sum(self.data.pop(n, None) is not None for n in names)


def test_a_planted_dek_entry_never_fails_or_steers_a_decrypt(tmp_path: Path) -> None:
    import json

    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.redis_cache import RedisKeyCache

    EncryptionService.init_local(tmp_path).close()
    redis = _Redis()
    config = EncryptionServiceConfig(data_dir=tmp_path, keyring_refresh_seconds=0)
    writer = EncryptionService(config, key_cache=RedisKeyCache(redis))
    envelope = writer.encrypt(b"v", CTX, key_reference="stored")
    writer.close()
    first = EncryptionService(config, key_cache=RedisKeyCache(redis))
    assert first.decrypt(envelope, CTX) == b"v"  # read from the key store, then shared
    first.close()
    dek_id = parse_envelope(envelope).dek_id
    [name] = [n for n in redis.data if n.endswith(f"dek:{dek_id}")]
    genuine = json.loads(redis.data[name])
    plants = [
        # A key id the provider does not have, and an edited record with the genuine tag.
        {**genuine, "record": {**genuine["record"], "wrapping_key_id": "local:99"}},
        {**genuine, "record": {**genuine["record"], "created_at": 1.0}},
    ]
    for plant in plants:
        redis.data[name] = json.dumps(plant).encode()
        cache = RedisKeyCache(redis)
        reader = EncryptionService(config, key_cache=cache)
        assert reader.decrypt(envelope, CTX) == b"v"  # from the key store's row
        assert cache.stats()["forged"] == 1
        reader.close()
