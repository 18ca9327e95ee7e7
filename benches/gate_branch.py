"""Gate checks for branch keys (DEKs derived locally from a branch key).

- A warm encrypt of 64 B with a branch-derived DEK against today's per-context cached encrypt
  (a stored DEK), one context and 100 tenants in turn: the derived DEK is cached like any
  other, so a branch key must add nothing to the hot path (target <= 1.2x).
- The envelope of a 16-byte value with a branch key reference, in the key-committing format
  v2 (target <= 100 bytes; 96 measured: v1's 64 plus the 32-byte commitment).
- Against the AWS Material Providers Library (aws-cryptographic-material-providers with
  aws-encryption-sdk 4, unsigned committing suite), measured in the same rounds (>= 500x):
  its hierarchical keyring with one branch key, its key store on DynamoDB and KMS of the
  moto server (when ``GLC_KMS_ENDPOINT`` names one, as scripts/services.sh exports), and its
  raw AES keyring, the MPL's floor with no AWS call at all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from itertools import cycle
from typing import Any

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
        return Ratio("envelope bytes of a 16-byte value, branch reference", size, 100, False, 0, 0)

    def raw_aes_keyring() -> Any:
        from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
        from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
        from aws_cryptographic_material_providers.mpl.models import (
            AesWrappingAlg,
            CreateRawAesKeyringInput,
        )

        mpl = AwsCryptographicMaterialProviders(config=MaterialProvidersConfig())
        return mpl.create_raw_aes_keyring(
            input=CreateRawAesKeyringInput(
                key_namespace="bench",
                key_name="raw-aes",
                wrapping_key=os.urandom(32),
                wrapping_alg=AesWrappingAlg.ALG_AES256_GCM_IV12_TAG16,
            )
        )

    def against_mpl(name: str, make_keyring: Callable[[], Any]) -> Ratio:
        import aws_encryption_sdk
        from aws_encryption_sdk import CommitmentPolicy
        from aws_encryption_sdk.identifiers import Algorithm

        keyring = make_keyring()
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
        return Ratio(name, 1 / r, 500, True, ta, tb)

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
    found.append(
        lambda: against_mpl(
            "encrypt 64 B, branch key vs MPL raw AES keyring (unsigned)", raw_aes_keyring
        )
    )
    endpoint = os.environ.get("GLC_KMS_ENDPOINT")
    if endpoint:
        found.append(
            lambda: against_mpl(
                "encrypt 64 B, branch key vs MPL hierarchical keyring on moto",
                lambda: _hierarchical_keyring(endpoint),
            )
        )
    return found


def _hierarchical_keyring(endpoint: str) -> Any:
    """The MPL hierarchical keyring with one branch key, its key store on the moto server."""
    import uuid

    import boto3
    from aws_cryptographic_material_providers.keystore import KeyStore
    from aws_cryptographic_material_providers.keystore.config import KeyStoreConfig
    from aws_cryptographic_material_providers.keystore.models import (
        CreateKeyInput,
        KMSConfigurationKmsKeyArn,
    )
    from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
    from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
    from aws_cryptographic_material_providers.mpl.models import (
        CacheTypeDefault,
        CreateAwsKmsHierarchicalKeyringInput,
        DefaultCache,
    )

    options = {
        "region_name": "us-east-1",
        "endpoint_url": endpoint,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    kms = boto3.client("kms", **options)
    ddb = boto3.client("dynamodb", **options)
    arn = kms.create_key(Description="MPL hierarchical keyring peer")["KeyMetadata"]["Arn"]
    table = f"glc-bench-keystore-{uuid.uuid4().hex[:8]}"
    # The MPL key store's table layout: partition key branch-key-id, sort key type.
    ddb.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "branch-key-id", "KeyType": "HASH"},
            {"AttributeName": "type", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "branch-key-id", "AttributeType": "S"},
            {"AttributeName": "type", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    store = KeyStore(
        config=KeyStoreConfig(
            ddb_client=ddb,
            ddb_table_name=table,
            logical_key_store_name=table,
            kms_client=kms,
            kms_configuration=KMSConfigurationKmsKeyArn(arn),
        )
    )
    branch_key_id = store.create_key(input=CreateKeyInput()).branch_key_identifier
    mpl = AwsCryptographicMaterialProviders(config=MaterialProvidersConfig())
    return mpl.create_aws_kms_hierarchical_keyring(
        input=CreateAwsKmsHierarchicalKeyringInput(
            key_store=store,
            branch_key_id=branch_key_id,
            ttl_seconds=600,
            cache=CacheTypeDefault(DefaultCache(entry_capacity=100)),
        )
    )
