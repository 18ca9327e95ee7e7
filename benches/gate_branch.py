"""Gate checks for branch keys (DEKs derived locally from a branch key).

- A warm encrypt of 64 B with a branch-derived DEK against today's per-context cached encrypt
  (a stored DEK), one context and 100 tenants in turn: the derived DEK is cached like any
  other, so a branch key must add nothing to the hot path (target <= 1.2x).
- The envelope of a 16-byte value with a branch key reference (target <= 64 bytes).
- Against the AWS Material Providers Library (aws-cryptographic-material-providers with
  aws-encryption-sdk 4, unsigned committing suite), measured in the same rounds (>= 500x).
  The MPL's hierarchical keyring needs its DynamoDB key store, whose creation fails on the
  moto server (TransactWriteItems), so the peer is the MPL's raw AES keyring: the MPL's floor
  with no AWS call at all, faster than its hierarchical keyring (PEERS.md: 1,147 µs against
  1,501 µs), which makes the ratio a lower bound.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from itertools import cycle

from benches._measure import Ratio, time_ratio


def checks() -> list[Callable[[], Ratio]]:
    from greenlang_crypto import EncryptionContext
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.service import EncryptionService

    pt64 = os.urandom(64)
    tenants = [EncryptionContext(f"tenant-{i}", "pii") for i in range(100)]

    def services(data: str) -> tuple[EncryptionService, EncryptionService]:
        EncryptionService.init_local(data).close()

        def make(reference: str) -> EncryptionService:
            # No background refresh: only the data path is measured.
            cfg = EncryptionServiceConfig(
                data_dir=data, key_reference=reference, keyring_refresh_seconds=0
            )
            return EncryptionService(cfg)

        return make("branch"), make("stored")

    def warm_one_context() -> Ratio:
        with tempfile.TemporaryDirectory() as data:
            branch, stored = services(data)
            ctx = tenants[0]
            try:
                r, ta, tb = time_ratio(
                    lambda: branch.encrypt(pt64, ctx),
                    lambda: stored.encrypt(pt64, ctx),
                    rounds=41,
                )
            finally:
                branch.close()
                stored.close()
        return Ratio(
            "encrypt 64 B, warm branch key vs per-context cached DEK", r, 1.2, False, ta, tb
        )

    def warm_many_tenants() -> Ratio:
        with tempfile.TemporaryDirectory() as data:
            branch, stored = services(data)
            for ctx in tenants:
                branch.encrypt(pt64, ctx)
                stored.encrypt(pt64, ctx)
            a, b = cycle(tenants), cycle(tenants)
            try:
                r, ta, tb = time_ratio(
                    lambda: branch.encrypt(pt64, next(a)),
                    lambda: stored.encrypt(pt64, next(b)),
                    rounds=41,
                )
            finally:
                branch.close()
                stored.close()
        return Ratio(
            "encrypt 64 B, 100 tenants in turn: branch vs per-context DEKs", r, 1.2, False, ta, tb
        )

    def warm_decrypt() -> Ratio:
        with tempfile.TemporaryDirectory() as data:
            branch, stored = services(data)
            ctx = tenants[0]
            env_b, env_s = branch.encrypt(pt64, ctx), stored.encrypt(pt64, ctx)
            try:
                r, ta, tb = time_ratio(
                    lambda: branch.decrypt(env_b, ctx),
                    lambda: stored.decrypt(env_s, ctx),
                    rounds=41,
                )
            finally:
                branch.close()
                stored.close()
        return Ratio(
            "decrypt 64 B, warm derived DEK vs per-context cached DEK", r, 1.2, False, ta, tb
        )

    def envelope_size() -> Ratio:
        with tempfile.TemporaryDirectory() as data:
            branch, stored = services(data)
            size = len(branch.encrypt(os.urandom(16), tenants[0]))
            branch.close()
            stored.close()
        return Ratio("envelope bytes of a 16-byte value, branch reference", size, 64, False, 0, 0)

    def against_mpl() -> Ratio:
        import aws_encryption_sdk
        from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
        from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
        from aws_cryptographic_material_providers.mpl.models import (
            AesWrappingAlg,
            CreateRawAesKeyringInput,
        )
        from aws_encryption_sdk import CommitmentPolicy
        from aws_encryption_sdk.identifiers import Algorithm

        mpl = AwsCryptographicMaterialProviders(config=MaterialProvidersConfig())
        keyring = mpl.create_raw_aes_keyring(
            input=CreateRawAesKeyringInput(
                key_namespace="bench",
                key_name="raw-aes",
                wrapping_key=os.urandom(32),
                wrapping_alg=AesWrappingAlg.ALG_AES256_GCM_IV12_TAG16,
            )
        )
        client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )
        context = {"tenant_id": "tenant-0", "data_class": "pii"}

        def peer() -> None:
            client.encrypt(
                source=pt64,
                keyring=keyring,
                encryption_context=context,
                algorithm=Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
            )

        with tempfile.TemporaryDirectory() as data:
            branch, stored = services(data)
            ctx = tenants[0]
            try:
                r, ta, tb = time_ratio(lambda: branch.encrypt(pt64, ctx), peer, rounds=9)
            finally:
                branch.close()
                stored.close()
        return Ratio(
            "encrypt 64 B, branch key vs MPL raw AES keyring (unsigned)", 1 / r, 500, True, ta, tb
        )

    found: list[Callable[[], Ratio]] = [
        warm_one_context,
        warm_many_tenants,
        warm_decrypt,
        envelope_size,
    ]
    try:
        import aws_cryptographic_material_providers  # noqa: F401
    except ImportError:
        print("note: aws-cryptographic-material-providers is not installed; no MPL peer")
        return found
    return [*found, against_mpl]
