"""Stream format v1: golden streams that must decrypt forever, and an independent reading.

The second test decrypts every golden stream with pyca/cryptography (HKDF-SHA256 and AES-GCM)
following docs/FORMAT.md alone, so the document and the Rust implementation cannot drift
apart unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from greenlang_crypto import _core as core
from greenlang_crypto.exceptions import DecryptionError

VECTORS = Path(__file__).parent.parent / "vectors"
GOLDEN = json.loads((VECTORS / "stream_v1.json").read_text())
CASES = {case["name"]: case for case in GOLDEN["cases"]}


def pattern(n: int) -> bytes:
    return bytes((i * 31 + 7) % 251 for i in range(n))


def blob(case: dict[str, Any]) -> bytes:
    data = (VECTORS / case["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == case["sha256"], "golden file changed"
    return data


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_streams_decrypt_forever(name: str) -> None:
    case = CASES[name]
    data = blob(case)
    key = core.DataKey.from_bytes(bytes.fromhex(case["key"]))
    ctx = core.canonical_context(case["context"])
    ad = bytes.fromhex(case["associated_data"])
    header = core.parse_stream_header(data)
    assert header.segment_size == case["segment_size"]
    assert header.key_envelope.startswith(bytes.fromhex(case["key_ref"]))
    dec = core.StreamDecryptor(key, data[: header.header_len], ctx, ad)
    body = data[header.header_len :]
    assert dec.open(0, body, True) == pattern(case["plaintext_len"])
    # The same salt and prefix reproduce the same bytes: the writer has not changed either.
    enc = core.hazmat_stream_encryptor(
        key,
        bytes.fromhex(case["key_ref"]),
        ctx,
        ad,
        case["segment_size"],
        bytes.fromhex(case["salt"]),
        bytes.fromhex(case["prefix"]),
    )
    assert enc.header + enc.seal(pattern(case["plaintext_len"]), True) == data
    with pytest.raises(DecryptionError):
        core.StreamDecryptor(key, data[: header.header_len], ctx, ad + b"x")


def spec_decrypt(case: dict[str, Any], data: bytes) -> bytes:
    """Decrypts a stream following docs/FORMAT.md, with pyca/cryptography only."""
    magic, version, alg, flags, seg, n = struct.unpack(">BBBBIH", data[:10])
    assert (magic, version, alg, flags) == (0xFB, 1, 1, 0)
    key_ref = data[10 : 10 + n]
    salt = data[10 + n : 42 + n]
    prefix = data[42 + n : 49 + n]
    tag = data[49 + n : 81 + n]
    assert key_ref == bytes.fromhex(case["key_ref"])
    ctx = core.canonical_context(case["context"])
    ad = bytes.fromhex(case["associated_data"])
    binding = hashlib.sha256(
        data[: 49 + n] + struct.pack(">I", len(ctx)) + ctx + struct.pack(">I", len(ad)) + ad
    ).digest()
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=salt,
        info=b"greenlang-crypto/stream/v1" + binding,
    ).derive(bytes.fromhex(case["key"]))
    assert okm[32:] == tag
    aead = AESGCM(okm[:32])
    body = data[81 + n :]
    sealed = seg + 16
    count = max(1, -(-len(body) // sealed))
    out = bytearray()
    for i in range(count):
        nonce = prefix + struct.pack(">I", i) + bytes([i == count - 1])
        out += aead.decrypt(nonce, body[i * sealed : (i + 1) * sealed], None)
    return bytes(out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_format_document_matches_the_implementation(name: str) -> None:
    case = CASES[name]
    assert spec_decrypt(case, blob(case)) == pattern(case["plaintext_len"])
