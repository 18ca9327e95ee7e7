"""An inline envelope cannot make the service call a KMS key outside its keyring.

Against the moto KMS server over HTTP: an envelope whose inline key reference names another
KMS key (one the attacker controls, valid at KMS) is refused with the opaque
``DecryptionError`` before any request leaves the process. Requests are counted at the boto3
clients themselves (botocore ``before-send`` hooks), so nothing the provider does on its own
can hide one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto._core import EnvelopeSealer
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import DecryptionError
from greenlang_crypto.providers.base import KeyLimits
from greenlang_crypto.service import EncryptionService
from tests.integration.conftest import PRIMARY_REGION, KmsKeys

pytestmark = pytest.mark.integration
CTX = EncryptionContext("tenant-1", "pii")


@pytest.fixture
def services() -> Iterator[list[EncryptionService]]:
    made: list[EncryptionService] = []
    yield made
    for svc in made:
        svc.close()


def _count_requests(provider: Any) -> list[tuple[str, bytes]]:
    """Every HTTP request the provider's boto3 clients send: (operation, body)."""
    sent: list[tuple[str, bytes]] = []

    def hook(request: Any, **_: Any) -> None:
        target = request.headers.get("X-Amz-Target", b"")
        body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
        sent.append((target.decode() if isinstance(target, bytes) else str(target), body))

    for client in provider.clients.values():
        client.meta.events.register("before-send.kms", hook)
    return sent


def _forged(kms_keys: KmsKeys, make_provider: Callable[..., Any], foreign_arn: str) -> bytes:
    """An inline envelope whose DEK is wrapped under ``foreign_arn``: valid at KMS."""
    attacker = make_provider(keys=[foreign_arn])
    generated = attacker.generate_data_key(foreign_arn, CTX, KeyLimits())
    return EnvelopeSealer(
        generated.key,
        key_version=1,
        context=CTX.canonical,
        provider="aws-kms",
        key_id=foreign_arn,
        wrapped_dek=generated.wrapped,
        context_digest=True,
    ).seal(b"attacker chosen")


def _service(
    tmp_path: Path, provider: Any, keys: tuple[str, ...], made: list[EncryptionService]
) -> EncryptionService:
    cfg = EncryptionServiceConfig(
        provider="aws-kms",
        kms_key_ids=keys,
        key_store_url=f"sqlite:///{tmp_path / 'ks.db'}",
        data_dir=tmp_path,
        keyring_refresh_seconds=0,
    )
    svc = EncryptionService(cfg, provider=provider)
    made.append(svc)
    return svc


def test_an_inline_key_outside_the_keyring_costs_no_kms_call(
    tmp_path: Path,
    kms_keys: KmsKeys,
    make_provider: Callable[..., Any],
    services: list[EncryptionService],
) -> None:
    foreign = kms_keys.client().create_key(Description="not ours")["KeyMetadata"]["Arn"]
    forged = _forged(kms_keys, make_provider, foreign)
    provider = make_provider(keys=[kms_keys.single_arn])
    svc = _service(tmp_path, provider, (kms_keys.single_arn,), services)
    genuine = svc.encrypt(b"ours", CTX, key_reference="inline")
    sent = _count_requests(provider)

    for _ in range(3):
        with pytest.raises(DecryptionError) as info:
            svc.decrypt(forged, CTX)
        assert type(info.value) is DecryptionError
        assert foreign not in str(info.value) and "not ours" not in str(info.value)
    assert sent == []
    # The refusal is specific to the foreign key: our own inline envelope still opens (one
    # Decrypt, of our key) in a cold service.
    cold_provider = make_provider(keys=[kms_keys.single_arn])
    cold = _service(tmp_path, cold_provider, (kms_keys.single_arn,), services)
    cold_sent = _count_requests(cold_provider)
    assert cold.decrypt(genuine, CTX) == b"ours"
    assert [op for op, _ in cold_sent] == ["TrentService.Decrypt"]
    assert kms_keys.single_arn.encode() in cold_sent[0][1]


def test_with_an_alias_no_request_ever_names_the_foreign_key(
    tmp_path: Path,
    kms_keys: KmsKeys,
    make_provider: Callable[..., Any],
    services: list[EncryptionService],
) -> None:
    # With an alias in the configuration, the provider may ask KMS what the alias points to
    # (a key the fleet owns): that is the only request allowed. No Decrypt is sent, and no
    # request names the foreign key.
    client = kms_keys.client()
    client.create_alias(AliasName="alias/app-data", TargetKeyId=kms_keys.single_arn)
    foreign = client.create_key(Description="not ours")["KeyMetadata"]["Arn"]
    forged = _forged(kms_keys, make_provider, foreign)
    provider = make_provider(keys=["alias/app-data"], region=PRIMARY_REGION)
    svc = _service(tmp_path, provider, ("alias/app-data",), services)
    assert svc.decrypt(svc.encrypt(b"ours", CTX, key_reference="inline"), CTX) == b"ours"
    sent = _count_requests(provider)
    for _ in range(3):
        with pytest.raises(DecryptionError) as info:
            svc.decrypt(forged, CTX)
        assert type(info.value) is DecryptionError
    assert all(op == "TrentService.DescribeKey" for op, _ in sent), sent
    assert not any(foreign.encode() in body for _, body in sent)
    # And the alias is asked at most once per second, however many forged envelopes arrive.
    assert len(sent) <= 1
