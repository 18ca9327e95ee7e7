"""Wire format v1: golden envelopes, truncation and tampering, contexts, plaintext inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenlang_crypto import _core as core
from greenlang_crypto.exceptions import (
    DecryptionError,
    GreenlangCryptoError,
    InternalError,
    InvalidArgumentError,
    InvalidContextError,
    InvalidEnvelopeError,
    UnsupportedFormatError,
)

GOLDEN = Path(__file__).parent.parent / "vectors" / "golden_v1.json"
CTX = core.canonical_context({"tenant_id": "t1", "data_class": "pii"})


@pytest.fixture(scope="module")
def key() -> core.DataKey:
    return core.DataKey.generate()


def stored(key: core.DataKey, **kw: object) -> core.EnvelopeSealer:
    return core.EnvelopeSealer(key, key_version=1, context=CTX, dek_id=99, **kw)  # type: ignore[arg-type]


def inline(key: core.DataKey) -> core.EnvelopeSealer:
    return core.EnvelopeSealer(
        key,
        key_version=4,
        context=CTX,
        provider="aws-kms",
        key_id="arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
        wrapped_dek=b"\x01\x02" * 90,
        context_digest=True,
    )


def test_golden_envelopes_decrypt_forever() -> None:
    data = json.loads(GOLDEN.read_text())
    assert data["format_version"] == 1
    for case in data["cases"]:
        k = core.DataKey.from_bytes(bytes.fromhex(case["key"]))
        ctx = core.canonical_context(case["context"])
        env = bytes.fromhex(case["envelope"])
        aad = bytes.fromhex(case["associated_data"])
        assert core.open_envelope(k, env, ctx, aad) == bytes.fromhex(case["plaintext"]), case[
            "name"
        ]
        assert core.parse_envelope(env).version == 1


def test_header_fields(key: core.DataKey) -> None:
    env = inline(key).seal(b"hello")
    h = core.parse_envelope(env)
    assert (h.kind, h.key_version, h.provider) == ("inline", 4, "aws-kms")
    assert h.key_id is not None and h.key_id.endswith("567890ab")
    assert h.wrapped_dek == b"\x01\x02" * 90
    assert h.context_digest == core.context_digest(CTX)
    assert h.has_commitment and h.plaintext_len == 5 and h.dek_id is None
    assert env[0] == 0xFA and env[1] == core.FORMAT_VERSION
    s = core.parse_envelope(stored(key).seal(b"x"))
    # Format v2 (the default) commits every envelope to its key; v1 only inline ones.
    assert (s.kind, s.dek_id, s.provider, s.has_commitment) == ("stored", 99, None, True)
    assert s.version == 2 and s.key_ref_id == core.stored_key_ref_id(99)
    v1 = core.EnvelopeSealer(key, key_version=1, context=CTX, dek_id=99, format_version=1)
    h1 = core.parse_envelope(v1.seal(b"x"))
    assert (h1.version, h1.has_commitment) == (1, False)


def test_compact_stored_envelope(key: core.DataKey) -> None:
    # A 16-byte PII value with a stored key reference: 60 bytes in v1, and within 100 bytes
    # in v2 (the 32-byte commitment is the only growth).
    assert len(stored(key).seal(b"0123456789abcdef")) == 92
    v1 = core.EnvelopeSealer(key, key_version=1, context=CTX, dek_id=99, format_version=1)
    assert len(v1.seal(b"0123456789abcdef")) == 60


@pytest.mark.parametrize("make", [stored, inline])
def test_every_truncation_rejected(key: core.DataKey, make: object) -> None:
    env = make(key).seal(b"some secret value")  # type: ignore[operator]
    for n in range(len(env)):
        with pytest.raises(DecryptionError):
            core.open_envelope(key, env[:n], CTX)


@pytest.mark.parametrize("make", [stored, inline])
def test_every_bit_flip_rejected(key: core.DataKey, make: object) -> None:
    env = make(key).seal(b"some secret value")  # type: ignore[operator]
    for bit in range(len(env) * 8):
        bad = bytearray(env)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionError):
            core.open_envelope(key, bytes(bad), CTX)


@pytest.mark.parametrize("extra", [1, 12, 20])
def test_trailing_bytes_rejected(key: core.DataKey, extra: int) -> None:
    env = stored(key).seal(b"value")
    with pytest.raises(DecryptionError):
        core.open_envelope(key, env + b"\x00" * extra, CTX)


@pytest.mark.parametrize("blob", [b"", b"\xfa", b"\xfa\x01", b"\xfa\x01\x01\x02\x00\x00\x00\x01"])
def test_empty_and_header_only(key: core.DataKey, blob: bytes) -> None:
    with pytest.raises(InvalidEnvelopeError):
        core.open_envelope(key, blob, CTX)


def test_unknown_version_and_algorithm(key: core.DataKey) -> None:
    env = bytearray(stored(key).seal(b"x"))
    for version in (0, 3, 255):
        env[1] = version
        with pytest.raises(UnsupportedFormatError):
            core.parse_envelope(bytes(env))
    env[1] = 2
    env[2] = 2
    with pytest.raises(UnsupportedFormatError, match="algorithm"):
        core.open_envelope(key, bytes(env), CTX)


def test_huge_length_fields_rejected_without_allocation(key: core.DataKey) -> None:
    # Inline header claiming a 65535-byte key id with nothing behind it.
    blob = bytes([0xFA, 1, 1, 0x21, 0, 0, 0, 1, 5]) + b"local" + b"\xff\xff"
    with pytest.raises(InvalidEnvelopeError):
        core.parse_envelope(blob)


def test_header_edits_rejected(key: core.DataKey) -> None:
    env = bytearray(stored(key).seal(b"x"))
    env[7] ^= 1  # key version
    with pytest.raises(DecryptionError):
        core.open_envelope(key, bytes(env), CTX)


def test_wrapped_dek_swap_rejected(key: core.DataKey) -> None:
    # The same key under a header naming another wrapped DEK fails (header is AAD).
    a = inline(key).seal(b"value")
    other = core.EnvelopeSealer(
        key, key_version=4, context=CTX, provider="aws-kms", key_id="k", wrapped_dek=b"z" * 180
    )
    b = other.seal(b"value")
    ha, hb = core.parse_envelope(a), core.parse_envelope(b)
    forged = b[: hb.header_len] + a[ha.header_len :]
    with pytest.raises(DecryptionError):
        core.open_envelope(key, forged, CTX)


def test_wrong_key_fails_commitment(key: core.DataKey) -> None:
    env = inline(key).seal(b"value")
    with pytest.raises(DecryptionError) as e:
        core.open_envelope(core.DataKey.generate(), env, CTX)
    assert str(e.value) == "decryption failed"


@pytest.mark.parametrize(
    "other",
    [
        {"tenant_id": "t2", "data_class": "pii"},
        {"tenant_id": "t1", "data_class": "pii", "extra": "x"},
        {"tenant_id": "t1"},
        {"tenant_id": "T1", "data_class": "pii"},
        {"tenant_id": "t1 ", "data_class": "pii"},
        {"tenant_id": "t1", "data_class": "PII"},
    ],
)
def test_context_mismatch(key: core.DataKey, other: dict[str, str]) -> None:
    env = stored(key).seal(b"value")
    with pytest.raises(DecryptionError) as e:
        core.open_envelope(key, env, core.canonical_context(other))
    assert str(e.value) == "decryption failed"


def test_context_nfc_nfd_and_order() -> None:
    nfc = core.canonical_context({"tenant_id": "caf\u00e9", "data_class": "pii"})
    nfd = core.canonical_context({"tenant_id": "cafe\u0301", "data_class": "pii"})
    assert nfc != nfd
    assert core.canonical_context({"a": "1", "b": "2"}) == core.canonical_context(
        {"b": "2", "a": "1"}
    )
    # Delimiter injection: a value holding separators cannot pose as two keys.
    assert core.canonical_context({"a": "b,c=d"}) != core.canonical_context({"a": "b", "c": "d"})


def test_empty_context_none_and_empty_dict_are_one_behaviour(key: core.DataKey) -> None:
    assert core.canonical_context(None) == core.canonical_context({}) == core.canonical_context()
    env = core.EnvelopeSealer(
        key, key_version=1, context=core.canonical_context({}), dek_id=1
    ).seal(b"v")
    assert core.open_envelope(key, env, core.canonical_context(None)) == b"v"


@pytest.mark.parametrize(
    "bad",
    [{"a": 1}, {1: "a"}, {"": "x"}, {"a": "\ud800"}, {"\udfff": "x"}, ["a"], "a=b"],
)
def test_bad_context_values(bad: object) -> None:
    with pytest.raises(InvalidContextError) as e:
        core.canonical_context(bad)  # type: ignore[arg-type]
    assert "\ud800" not in str(e.value)


def test_oversized_context() -> None:
    with pytest.raises(InvalidContextError):
        core.canonical_context({"a": "x" * 70_000})
    with pytest.raises(InvalidContextError):
        core.canonical_context({f"k{i}": "v" for i in range(20_000)})


def test_non_canonical_context_bytes_rejected_at_seal(key: core.DataKey) -> None:
    with pytest.raises(InvalidContextError):
        core.EnvelopeSealer(key, key_version=1, context=b"\x00\x01", dek_id=1)


def test_sealer_argument_validation(key: core.DataKey) -> None:
    with pytest.raises(InvalidArgumentError):
        core.EnvelopeSealer(key, key_version=1, context=CTX)
    with pytest.raises(InvalidArgumentError):
        core.EnvelopeSealer(key, key_version=1, context=CTX, dek_id=1, provider="p")
    with pytest.raises(InvalidArgumentError):
        core.EnvelopeSealer(
            key, key_version=1, context=CTX, provider="p" * 33, key_id="k", wrapped_dek=b"w"
        )
    with pytest.raises(OverflowError):
        core.EnvelopeSealer(key, key_version=2**32, context=CTX, dek_id=1)


@pytest.mark.parametrize(
    "value", [b"", b"", b"\x00", "emoji \U0001f600 rtl \u05d0 nul \x00".encode()]
)
def test_byte_exact_round_trip(key: core.DataKey, value: bytes) -> None:
    env = stored(key).seal(value, b"aad")
    assert core.open_envelope(key, env, CTX, b"aad") == value


@pytest.mark.parametrize("wrong", [123, "text", {"a": 1}, [b"x"], None])
def test_wrong_plaintext_types(key: core.DataKey, wrong: object) -> None:
    with pytest.raises(TypeError):
        stored(key).seal(wrong)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        key.seal(wrong)  # type: ignore[arg-type]


def test_mutable_buffers_are_copied(key: core.DataKey) -> None:
    buf = bytearray(b"mutable plaintext")
    env = stored(key).seal(buf)
    buf[:] = b"X" * len(buf)
    assert core.open_envelope(key, env, CTX) == b"mutable plaintext"
    out = core.open_envelope(key, memoryview(bytearray(env)), CTX)
    assert isinstance(out, bytes)


def test_batch_seal_with_per_item_aad(key: core.DataKey) -> None:
    s = stored(key)
    envs = s.seal_batch([b"a", b"bb", b""], [b"row1", None, b"row3"])
    assert core.open_envelope(key, envs[0], CTX, b"row1") == b"a"
    assert core.open_envelope(key, envs[1], CTX) == b"bb"
    assert core.open_envelope(key, envs[2], CTX, b"row3") == b""
    with pytest.raises(DecryptionError):
        core.open_envelope(key, envs[0], CTX, b"row3")
    with pytest.raises(InvalidArgumentError):
        s.seal_batch([b"a", b"b"], [b"only one"])


@settings(max_examples=200, deadline=None)
@given(pt=st.binary(max_size=2048), aad=st.binary(max_size=64), version=st.integers(0, 2**32 - 1))
def test_round_trip_property(pt: bytes, aad: bytes, version: int) -> None:
    k = core.DataKey.generate()
    s = core.EnvelopeSealer(k, key_version=version, context=CTX, dek_id=version)
    env = s.seal(pt, aad)
    assert core.open_envelope(k, env, CTX, aad) == pt
    assert core.parse_envelope(env).key_version == version


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutations_only_raise_typed_errors(data: st.DataObject) -> None:
    # Random structured mutations of a valid envelope only ever raise the typed reject: never
    # an InternalError (a Rust panic caught at the boundary), and a changed envelope never
    # decrypts.
    k = core.DataKey.generate()
    plaintext = data.draw(st.binary(max_size=64))
    original = inline(k).seal(plaintext)
    env = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(len(env) - 1, 0)))
        if op == "flip" and env:
            env[pos] ^= data.draw(st.integers(1, 255))
        elif op == "set" and env:
            env[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            env[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and env:
            del env[pos]
        else:
            env = env[:pos]
    try:
        out = core.open_envelope(k, bytes(env), CTX)
    except InternalError:
        pytest.fail("a mutated envelope reached a Rust panic")
    except DecryptionError:
        return  # opaque reject; InvalidEnvelopeError and UnsupportedFormatError are kinds
    # Only a mutation that restored the original bytes (setting a byte to its own value) may
    # decrypt, and then to the original plaintext.
    assert bytes(env) == original, "a tampered envelope decrypted"
    assert out == plaintext


@settings(max_examples=500, deadline=None)
@given(blob=st.binary(max_size=512))
def test_random_bytes_only_raise_typed_errors(blob: bytes) -> None:
    k = core.DataKey.generate()
    try:
        core.parse_envelope(blob)
        core.open_envelope(k, blob, CTX)
    except GreenlangCryptoError:
        pass
    else:  # pragma: no cover - a random blob authenticating would be a catastrophic bug
        pytest.fail("random bytes decrypted")
