"""Stream keys for the tests of the streams modules: Rust encryptors without a service."""

from __future__ import annotations

from dataclasses import dataclass

from greenlang_crypto import _core as core

SEG = core.STREAM_MIN_SEGMENT


@dataclass(frozen=True)
class StreamKeys:
    """One DEK and context; makes fresh encryptors and decryptors under them."""

    key: core.DataKey
    ref: bytes
    ctx: bytes

    def encryptor(self, segment_size: int = SEG) -> core.StreamEncryptor:
        return core.StreamEncryptor(self.key, self.ref, self.ctx, b"ad", segment_size=segment_size)

    def decryptor(self, header: bytes) -> core.StreamDecryptor:
        return core.StreamDecryptor(self.key, header, self.ctx, b"ad")


def new_keys() -> StreamKeys:
    """A fresh DEK under a fixed context."""
    key = core.DataKey.generate()
    ctx = core.canonical_context({"tenant_id": "t", "data_class": "d"})
    ref = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=1).header
    return StreamKeys(key, ref, ctx)
