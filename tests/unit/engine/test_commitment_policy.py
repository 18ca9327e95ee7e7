"""The commitment policy of the service: what it writes (v1 or v2) and what it reads."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from greenlang_crypto import parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import (
    CommitmentPolicyError,
    ConfigurationError,
    DecryptionError,
)
from greenlang_crypto.service import EncryptionService

from .conftest import CTX, make_service

REQUIRE = "require_encrypt_require_decrypt"
FORBID = "forbid_encrypt_allow_decrypt"


def _service(tmp_path: Path, policy: str | None = None) -> EncryptionService:
    # The services of one test share a data directory: one local master key, one key store.
    if policy is None:
        return make_service(tmp_path)
    return make_service(tmp_path, commitment_policy=policy)


@pytest.mark.parametrize("reference", ["stored", "branch", "inline"])
def test_the_default_writes_v2_and_reads_v1(tmp_path: Path, reference: str) -> None:
    old = _service(tmp_path, FORBID)
    v1 = old.encrypt(b"0123456789abcdef", CTX, key_reference=reference)
    new = _service(tmp_path)
    v2 = new.encrypt(b"0123456789abcdef", CTX, key_reference=reference)
    assert parse_envelope(v1).version == 1 and parse_envelope(v2).version == 2
    assert parse_envelope(v2).has_commitment
    if reference != "inline":
        # The 32-byte commitment is the only growth, and a 16-byte value stays within 100.
        assert len(v2) - len(v1) == 32 and len(v2) <= 100
    # A rolling upgrade: each side reads what the other wrote.
    assert new.decrypt(v1, CTX) == old.decrypt(v2, CTX) == b"0123456789abcdef"
    old.close()
    new.close()


@pytest.mark.parametrize("reference", ["stored", "branch"])
def test_require_refuses_uncommitted_envelopes_with_a_typed_error(
    tmp_path: Path, reference: str
) -> None:
    old = _service(tmp_path, FORBID)
    v1 = old.encrypt(b"legacy", CTX, key_reference=reference)
    strict = _service(tmp_path, REQUIRE)
    v2 = strict.encrypt(b"fresh", CTX, key_reference=reference)
    assert strict.decrypt(v2, CTX) == b"fresh"
    for _ in range(2):  # a refusal caches nothing that would let a retry through
        with pytest.raises(CommitmentPolicyError) as err:
            strict.decrypt(v1, CTX)
        assert isinstance(err.value, DecryptionError)
    # The column fast path (a Rust opener over the cache) refuses it too.
    opener = strict.value_decryptor(CTX)
    assert opener(v2) == b"fresh"
    with pytest.raises(CommitmentPolicyError):
        opener(v1)
    # Re-encryption moves the value to v2, which the strict reader then accepts.
    moved = old.reencrypt(v1, CTX)
    assert parse_envelope(moved).version == 1  # the old writer still writes v1
    moved = _service(tmp_path).reencrypt(v1, CTX)
    assert parse_envelope(moved).version == 2 and strict.decrypt(moved, CTX) == b"legacy"
    old.close()
    strict.close()


def test_require_still_reads_streams_written_before_v2(tmp_path: Path) -> None:
    # A stream commits through its header tag (a PRF of the DEK), whatever the envelope
    # header it embeds, so the policy does not refuse streams with a v1 key reference.
    old = _service(tmp_path, FORBID)
    sealed = io.BytesIO()
    old.encrypt_stream(io.BytesIO(b"x" * 100_000), sealed, CTX)
    strict = _service(tmp_path, REQUIRE)
    out = io.BytesIO()
    strict.decrypt_stream(io.BytesIO(sealed.getvalue()), out, CTX)
    assert out.getvalue() == b"x" * 100_000
    old.close()
    strict.close()


def test_the_policy_is_validated_and_read_from_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="commitment_policy"):
        EncryptionServiceConfig(data_dir=tmp_path, commitment_policy="sometimes")
    cfg = EncryptionServiceConfig.from_env(
        {"GLC_DATA_DIR": str(tmp_path), "GLC_COMMITMENT_POLICY": REQUIRE}
    )
    assert cfg.commitment_policy == REQUIRE
    assert EncryptionServiceConfig(data_dir=tmp_path).commitment_policy == (
        "require_encrypt_allow_decrypt"
    )
