"""Envelope format v2: key commitment and key separation.

The independent decryptor below is written from docs/FORMAT.md alone, with pyca/cryptography's
HKDF and AES-GCM: if the document and the code ever disagree, the golden vectors stop opening
here. The two-context attack builds, with a GHASH solver, one v1 branch envelope that opens
under two tenants' contexts, then shows v2 refuses the same construction.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from greenlang_crypto import _core as core
from greenlang_crypto.exceptions import (
    DecryptionError,
    GreenlangCryptoError,
    InvalidEnvelopeError,
)

GOLDEN = Path(__file__).parent.parent / "vectors" / "golden_v2.json"
CTX = {"tenant_id": "tenant-a", "data_class": "pii"}


# -- an independent reader, from docs/FORMAT.md --------------------------------------------


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _canonical(ctx: dict[str, str]) -> bytes:
    out = struct.pack(">H", len(ctx))
    for k, v in sorted(ctx.items(), key=lambda kv: kv[0].encode()):
        out += struct.pack(">H", len(k.encode())) + k.encode()
        out += struct.pack(">H", len(v.encode())) + v.encode()
    return out


def _v2_keys(dek: bytes) -> tuple[bytes, bytes]:
    """(AES-256-GCM key, commitment) of a DEK, as the key schedule section says."""
    salt = b"greenlang-crypto/v2/envelope"
    return (
        _hkdf(dek, salt, b"greenlang-crypto/v2/aes-256-gcm-key"),
        _hkdf(dek, salt, b"greenlang-crypto/v2/key-commitment"),
    )


def _branch_dek(branch_key: bytes, branch_id: int, salt: bytes, canonical: bytes) -> bytes:
    info = b"greenlang-crypto/v1/branch-dek" + struct.pack(">I", branch_id) + canonical
    return _hkdf(branch_key, salt, info)


def doc_decrypt(
    envelope: bytes, key: bytes, ctx: dict[str, str], aad: bytes, *, branch_key: bool
) -> bytes:
    """Opens a v2 envelope following the document only (no greenlang_crypto code)."""
    assert envelope[0] == 0xFA and envelope[1] == 2 and envelope[2] == 1
    flags = envelope[3]
    kind = flags & 0b11
    pos = 8
    if kind == 2:
        pos += 8
    elif kind == 3:
        branch_id = struct.unpack(">I", envelope[pos : pos + 4])[0]
        salt = envelope[pos + 4 : pos + 12]
        pos += 12
    else:
        assert kind == 1
        pos += 1 + envelope[pos]
        pos += 2 + struct.unpack(">H", envelope[pos : pos + 2])[0]
        pos += 2 + struct.unpack(">H", envelope[pos : pos + 2])[0]
    canonical = _canonical(ctx)
    if flags & 0x10:
        digest = hashes.Hash(hashes.SHA256())
        digest.update(canonical)
        if envelope[pos : pos + 32] != digest.finalize():
            raise ValueError("context digest")
        pos += 32
    assert flags & 0x20, "v2 always commits"
    commitment = envelope[pos : pos + 32]
    pos += 32
    dek = _branch_dek(key, branch_id, salt, canonical) if branch_key else key
    aes_key, expected = _v2_keys(dek)
    if commitment != expected:
        raise ValueError("commitment")
    header, nonce, body = envelope[:pos], envelope[pos : pos + 12], envelope[pos + 12 :]
    full_aad = header + struct.pack(">I", len(canonical)) + canonical
    full_aad += struct.pack(">I", len(aad)) + aad
    return AESGCM(aes_key).decrypt(nonce, body, full_aad)


def _cases() -> list[dict[str, object]]:
    data = json.loads(GOLDEN.read_text())
    assert data["format_version"] == 2
    cases: list[dict[str, object]] = data["cases"]
    return cases


@pytest.mark.parametrize("case", _cases(), ids=lambda c: str(c["name"]))
def test_golden_v2_envelopes_decrypt_forever(case: dict[str, object]) -> None:
    env = bytes.fromhex(str(case["envelope"]))
    key = core.DataKey.from_bytes(bytes.fromhex(str(case["key"])))
    ctx = core.canonical_context(case["context"])  # type: ignore[arg-type]
    aad = bytes.fromhex(str(case["associated_data"]))
    if case.get("key_is_branch_key"):
        key = core.branch_data_key(key, env, ctx)
    assert core.open_envelope(key, env, ctx, aad) == bytes.fromhex(str(case["plaintext"]))
    h = core.parse_envelope(env)
    assert h.version == 2 and h.has_commitment


@pytest.mark.parametrize("case", _cases(), ids=lambda c: str(c["name"]))
def test_golden_v2_envelopes_decrypt_from_the_document_alone(case: dict[str, object]) -> None:
    env = bytes.fromhex(str(case["envelope"]))
    key = bytes.fromhex(str(case["key"]))
    ctx: dict[str, str] = case["context"]  # type: ignore[assignment]
    aad = bytes.fromhex(str(case["associated_data"]))
    branch = bool(case.get("key_is_branch_key"))
    assert doc_decrypt(env, key, ctx, aad, branch_key=branch) == bytes.fromhex(
        str(case["plaintext"])
    )
    # The reader is not a rubber stamp: another context or key fails it (at the digest, the
    # commitment or the tag, whichever comes first).
    with pytest.raises((ValueError, InvalidTag)):
        doc_decrypt(env, key, {**ctx, "tenant_id": "other"}, aad, branch_key=branch)
    with pytest.raises(ValueError, match="commitment"):
        doc_decrypt(env, bytes(32), ctx, aad, branch_key=branch)


def test_a_16_byte_value_stays_within_100_bytes() -> None:
    key = core.DataKey.generate()
    ctx = core.canonical_context(CTX)
    stored = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=2**62)
    branch = core.branch_sealer(key, branch_id=2**31, key_version=1, context=ctx)
    assert len(stored.seal(b"0123456789abcdef")) == 92
    assert len(branch.seal(b"0123456789abcdef")) == 96


# -- the two-context attack (GHASH solved for one free ciphertext block) ---------------------

_R = 0xE1 << 120


def _gf_mul(x: int, y: int) -> int:
    """Multiplication in GCM's GF(2^128) (bit-reflected, SP 800-38D, 6.3)."""
    z, v = 0, x
    for i in range(127, -1, -1):
        if (y >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _gf_pow(x: int, n: int) -> int:
    out = 1 << 127  # the field's one
    while n:
        if n & 1:
            out = _gf_mul(out, x)
        x = _gf_mul(x, x)
        n >>= 1
    return out


def _gf_inv(x: int) -> int:
    return _gf_pow(x, (1 << 128) - 2)


def _blocks(data: bytes) -> list[int]:
    padded = data + b"\x00" * (-len(data) % 16)
    return [int.from_bytes(padded[i : i + 16], "big") for i in range(0, len(padded), 16)]


def _ghash(h: int, aad: bytes, ct: bytes) -> int:
    y = 0
    lengths = struct.pack(">QQ", len(aad) * 8, len(ct) * 8)
    for block in _blocks(aad) + _blocks(ct) + _blocks(lengths):
        y = _gf_mul(y ^ block, h)
    return y


def _aes_block(key: bytes, block: bytes) -> int:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return int.from_bytes(enc.update(block) + enc.finalize(), "big")


def _two_key_body(k1: bytes, aad1: bytes, k2: bytes, aad2: bytes, nonce: bytes) -> bytes:
    """``ciphertext || tag`` that authenticates under (k1, aad1) and under (k2, aad2).

    Three ciphertext blocks; the middle one is solved for. GHASH is linear in each block, and
    both sides give that block the same power of H, so one GF(2^128) division suffices.
    """
    ct = bytearray(b"\x11" * 48)
    h1, h2 = _aes_block(k1, bytes(16)), _aes_block(k2, bytes(16))
    j0 = nonce + b"\x00\x00\x00\x01"
    s1, s2 = _aes_block(k1, j0), _aes_block(k2, j0)
    ct[16:32] = bytes(16)
    base1, base2 = _ghash(h1, aad1, bytes(ct)), _ghash(h2, aad2, bytes(ct))
    power = 3  # block 2 of 3, then the length block: H^3
    coeff = _gf_pow(h1, power) ^ _gf_pow(h2, power)
    free = _gf_mul(s1 ^ s2 ^ base1 ^ base2, _gf_inv(coeff))
    ct[16:32] = free.to_bytes(16, "big")
    tag = _ghash(h1, aad1, bytes(ct)) ^ s1
    assert tag == _ghash(h2, aad2, bytes(ct)) ^ s2
    return bytes(ct) + tag.to_bytes(16, "big")


def _forge(branch_key: core.DataKey, version: int) -> tuple[bytes, bytes, bytes]:
    """A branch envelope (format ``version``) built to open under tenant alice and mallory.

    What a holder of the branch key (every instance has it) can do: derive both tenants'
    DEKs, then solve GHASH for a body valid under both.
    """
    alice = core.canonical_context({"tenant_id": "alice", "data_class": "pii"})
    mallory = core.canonical_context({"tenant_id": "mallory", "data_class": "pii"})
    # A genuine envelope for alice gives the header (branch id, salt, commitment if any).
    genuine = core.branch_sealer(
        branch_key, branch_id=5, key_version=1, context=alice, format_version=version
    ).seal(b"x")
    header_len = core.parse_envelope(genuine).header_len
    header, nonce = genuine[:header_len], genuine[header_len : header_len + 12]
    raw = core.export_key_bytes(branch_key)
    salt = header[12:20]
    dek_a = _branch_dek(raw, 5, salt, alice)
    dek_m = _branch_dek(raw, 5, salt, mallory)
    if version == 2:
        dek_a, dek_m = _v2_keys(dek_a)[0], _v2_keys(dek_m)[0]

    def aad(ctx: bytes) -> bytes:
        return header + struct.pack(">I", len(ctx)) + ctx + struct.pack(">I", 0)

    body = _two_key_body(dek_a, aad(alice), dek_m, aad(mallory), nonce)
    return header + nonce + body, alice, mallory


def _open(branch_key: core.DataKey, env: bytes, ctx: bytes) -> bytes:
    return core.open_envelope(core.branch_data_key(branch_key, env, ctx), env, ctx)


def test_the_solver_forges_a_v1_branch_envelope_for_two_tenants() -> None:
    # The weakness v2 removes, shown on v1: one envelope, two tenants, two plaintexts.
    branch_key = core.DataKey.generate()
    env, alice, mallory = _forge(branch_key, version=1)
    as_alice, as_mallory = _open(branch_key, env, alice), _open(branch_key, env, mallory)
    assert len(as_alice) == len(as_mallory) == 48 and as_alice != as_mallory


def test_a_v2_branch_envelope_cannot_name_two_tenants() -> None:
    branch_key = core.DataKey.generate()
    env, alice, mallory = _forge(branch_key, version=2)
    # The body is valid under both derived AES keys, and alice's commitment is genuine...
    assert len(_open(branch_key, env, alice)) == 48
    # ...but the commitment names alice's DEK, so mallory's reader refuses before AES-GCM.
    with pytest.raises(DecryptionError) as err:
        _open(branch_key, env, mallory)
    assert str(err.value) == "decryption failed"


def test_forged_envelopes_under_the_require_policy_cache() -> None:
    # A decryption cache that requires commitments reports a v1 uncommitted envelope as a
    # miss (the service then raises CommitmentPolicyError); v2 is served.
    key = core.DataKey.generate()
    ctx = core.canonical_context(CTX)
    cache = core.DekCache(10, 60.0)
    old = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=3, format_version=1)
    new = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=3)
    cache.put(core.stored_key_ref_id(3), key)
    v1, v2 = old.seal(b"old"), new.seal(b"new")
    assert cache.open(v1, ctx) == b"old" and not cache.require_commitment
    cache.set_require_commitment()
    assert cache.require_commitment
    assert cache.open(v1, ctx) is None
    assert cache.open(v2, ctx) == b"new"


# -- properties and fuzzing, as for v1 -------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    pt=st.binary(max_size=2048),
    aad=st.binary(max_size=64),
    version=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["stored", "inline", "branch"]),
)
def test_v2_round_trip_property(pt: bytes, aad: bytes, version: int, kind: str) -> None:
    key = core.DataKey.generate()
    ctx = core.canonical_context(CTX)
    if kind == "branch":
        sealer = core.branch_sealer(key, branch_id=version, key_version=version, context=ctx)
        env = sealer.seal(pt, aad)
        dek = core.branch_data_key(key, env, ctx)
    else:
        ref = (
            {"dek_id": version}
            if kind == "stored"
            else {"provider": "local", "key_id": "k", "wrapped_dek": b"w" * 40}
        )
        env = core.EnvelopeSealer(key, key_version=version, context=ctx, **ref).seal(pt, aad)  # type: ignore[arg-type]
        dek = key
    h = core.parse_envelope(env)
    assert (h.version, h.has_commitment, h.key_version, h.plaintext_len) == (
        2,
        True,
        version,
        len(pt),
    )
    assert core.open_envelope(dek, env, ctx, aad) == pt


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_v2_mutations_only_raise_typed_errors(data: st.DataObject) -> None:
    key = core.DataKey.generate()
    ctx = core.canonical_context(CTX)
    env = bytearray(core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=1).seal(b"payload"))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "extend", "set"]))
        if op == "flip" and env:
            i = data.draw(st.integers(0, len(env) - 1))
            env[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut" and env:
            del env[data.draw(st.integers(0, len(env) - 1)) :]
        elif op == "extend":
            env += data.draw(st.binary(min_size=1, max_size=40))
        elif env:
            env[data.draw(st.integers(0, min(len(env) - 1, 60)))] = data.draw(st.integers(0, 255))
    try:
        out = core.open_envelope(key, bytes(env), ctx)
    except GreenlangCryptoError as exc:
        assert isinstance(exc, DecryptionError | InvalidEnvelopeError) or "format" in str(exc)
    else:
        assert out == b"payload"


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=300), flags=st.integers(0, 255))
def test_v2_random_headers_only_raise_typed_errors(tail: bytes, flags: int) -> None:
    key = core.DataKey.generate()
    blob = bytes([0xFA, 2, 1, flags]) + tail
    with pytest.raises(GreenlangCryptoError):
        core.open_envelope(key, blob, core.canonical_context(CTX))
