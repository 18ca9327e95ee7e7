from __future__ import annotations

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
