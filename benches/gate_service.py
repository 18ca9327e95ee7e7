"""Service-level gate checks (issue: EncryptionService). Imported by benches/gate.py."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from benches._measure import Ratio, time_ratio


def _esdk_peer() -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """aws-encryption-sdk with a raw AES key, the unsigned committing suite and a caching CMM."""
    import aws_encryption_sdk
    from aws_encryption_sdk.caches.local import LocalCryptoMaterialsCache
    from aws_encryption_sdk.identifiers import (
        Algorithm,
        CommitmentPolicy,
        EncryptionKeyType,
        WrappingAlgorithm,
    )
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.key_providers.raw import RawMasterKey
    from aws_encryption_sdk.materials_managers.caching import CachingCryptoMaterialsManager

    key = RawMasterKey(
        provider_id="bench",
        key_id=b"k1",
        wrapping_key=WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=os.urandom(32),
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        ),
    )
    cmm = CachingCryptoMaterialsManager(
        master_key_provider=key,
        cache=LocalCryptoMaterialsCache(capacity=100),
        max_age=300.0,
        max_messages_encrypted=2**32,
    )
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    ctx = {"tenant_id": "t1", "data_class": "pii"}
    suite = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY

    def enc(pt: bytes) -> bytes:
        ct, _ = client.encrypt(
            source=pt, materials_manager=cmm, encryption_context=ctx, algorithm=suite
        )
        return bytes(ct)

    def dec(ct: bytes) -> bytes:
        pt, _ = client.decrypt(source=ct, materials_manager=cmm)
        return bytes(pt)

    return enc, dec


def checks() -> list[Callable[[], Ratio]]:
    from greenlang_crypto import DataKey, EncryptionContext
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.providers.local import LocalKeyProvider
    from greenlang_crypto.service import EncryptionService

    data_dir = tempfile.mkdtemp(prefix="glc-gate-")
    LocalKeyProvider(data_dir).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=data_dir))
    ctx = EncryptionContext(tenant_id="t1", data_class="pii")
    key = DataKey.generate()
    pt = os.urandom(64)
    env = svc.encrypt(pt, ctx)
    sealed = key.seal(pt)
    esdk_enc, esdk_dec = _esdk_peer()
    esdk_ct = esdk_enc(pt)
    assert esdk_dec(esdk_ct) == pt

    def le(
        name: str, a: Callable[[], object], b: Callable[[], object], target: float
    ) -> Callable[[], Ratio]:
        def run() -> Ratio:
            r, ta, tb = time_ratio(a, b)
            return Ratio(name, r, target, False, ta, tb)

        return run

    def speedup(
        name: str, a: Callable[[], object], b: Callable[[], object], target: float
    ) -> Callable[[], Ratio]:
        def run() -> Ratio:
            r, ta, tb = time_ratio(a, b, rounds=9)
            return Ratio(name, 1 / r, target, True, ta, tb)

        return run

    return [
        le(
            "service encrypt 64 B (cached DEK) vs bare core seal",
            lambda: svc.encrypt(pt, ctx),
            lambda: key.seal(pt),
            3.0,
        ),
        le(
            "service decrypt 64 B (cached DEK) vs bare core open",
            lambda: svc.decrypt(env, ctx),
            lambda: key.open(sealed),
            3.0,
        ),
        # Both sides commit to their key: our envelope format v2 against the SDK's
        # committing suite under REQUIRE_ENCRYPT_REQUIRE_DECRYPT.
        speedup(
            "service encrypt 64 B speed-up over aws-encryption-sdk (committing suite, caching CMM)",
            lambda: svc.encrypt(pt, ctx),
            lambda: esdk_enc(pt),
            250.0,
        ),
        speedup(
            "service decrypt 64 B speed-up over aws-encryption-sdk (committing suite, caching CMM)",
            lambda: svc.decrypt(env, ctx),
            lambda: esdk_dec(esdk_ct),
            250.0,
        ),
    ]
