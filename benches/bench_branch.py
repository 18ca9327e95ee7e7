"""pytest-benchmark suite for branch keys: a warm encrypt under a branch-derived DEK beside a
per-context cached DEK and the Material Providers Library's raw AES keyring (the MPL's floor).

`make bench` times them; the normal test run passes `--benchmark-disable` (one call each, as a
smoke test). The ratios are gated by benches/gate_branch.py.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.service import EncryptionService

CTX = EncryptionContext("tenant-0", "pii")
PT = os.urandom(64)


@pytest.fixture(scope="module")
def data_dir() -> str:
    d = tempfile.mkdtemp(prefix="glc-bench-branch-")
    EncryptionService.init_local(d).close()
    return d


@pytest.mark.parametrize("impl", ["branch", "stored", "mpl-raw-aes"])
def bench_encrypt_64b(benchmark: Any, data_dir: str, impl: str) -> None:
    benchmark.group = "encrypt 64 B, warm key"
    if impl == "mpl-raw-aes":
        pytest.importorskip("aws_cryptographic_material_providers")
        import aws_encryption_sdk
        from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
        from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
        from aws_cryptographic_material_providers.mpl.models import (
            AesWrappingAlg,
            CreateRawAesKeyringInput,
        )
        from aws_encryption_sdk.identifiers import Algorithm

        keyring = AwsCryptographicMaterialProviders(
            config=MaterialProvidersConfig()
        ).create_raw_aes_keyring(
            input=CreateRawAesKeyringInput(
                key_namespace="bench",
                key_name="raw-aes",
                wrapping_key=os.urandom(32),
                wrapping_alg=AesWrappingAlg.ALG_AES256_GCM_IV12_TAG16,
            )
        )
        client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=aws_encryption_sdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )
        ct, _ = benchmark(
            client.encrypt,
            source=PT,
            keyring=keyring,
            encryption_context=CTX.as_dict(),
            algorithm=Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
        )
        assert client.decrypt(source=ct, keyring=keyring)[0] == PT
        return
    cfg = EncryptionServiceConfig(data_dir=data_dir, key_reference=impl, keyring_refresh_seconds=0)
    svc = EncryptionService(cfg)
    svc.encrypt(PT, CTX)
    env = benchmark(svc.encrypt, PT, CTX)
    assert svc.decrypt(env, CTX) == PT
    svc.close()
