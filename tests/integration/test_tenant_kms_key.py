"""A tenant with a KMS key of its own (``tenant_kms_keys``), over the moto KMS server.

Its stored DEKs, branch keys and inline envelopes are wrapped under its key, a rewrap leaves
them there, and ``erase_tenant(..., schedule_kms_key_deletion=True)`` schedules the key's
deletion, so a key-store backup taken before the erasure cannot be unwrapped afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto.composition import build_provider
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import (
    ConfigurationError,
    InvalidArgumentError,
    KmsKeyDisabledError,
)
from greenlang_crypto.service import EncryptionService

pytestmark = pytest.mark.integration
ACME = EncryptionContext("acme", "pii")
OTHER = EncryptionContext("other", "pii")


def _refuse_pending_keys(provider: Any, kms: Any) -> None:
    """What real KMS does and moto does not: a key pending deletion refuses Decrypt.

    A fault the moto server cannot produce (it decrypts under a key in PendingDeletion), so
    it is added through the provider's own botocore clients' event hooks, and it asks the
    moto server for the key's real state on every call.
    """

    def check(params: dict[str, Any], **_: Any) -> None:
        key = params.get("KeyId")
        if key and kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingDeletion":
            raise ClientError(
                {"Error": {"Code": "KMSInvalidStateException", "Message": "pending deletion"}},
                "Decrypt",
            )

    for client in provider.clients.values():
        client.meta.events.register("before-parameter-build.kms.Decrypt", check)


@pytest.fixture
def services(
    tmp_path: Path, kms_keys: Any, make_provider: Callable[..., Any]
) -> Iterator[Callable[[], EncryptionService]]:
    opened: list[EncryptionService] = []
    new_key = kms_keys.client().create_key(Description="rewrap target")["KeyMetadata"]["Arn"]

    def make() -> EncryptionService:
        cfg = EncryptionServiceConfig(
            provider="aws-kms",
            kms_key_ids=(kms_keys.primary_arn, kms_keys.replica_arn, new_key),
            tenant_kms_keys={"acme": kms_keys.single_arn},
            key_store_url=f"sqlite:///{tmp_path / 'ks.db'}",
            data_dir=tmp_path,
            keyring_refresh_seconds=0,
        )
        provider = make_provider(
            keys=[kms_keys.primary_arn, kms_keys.replica_arn, new_key, kms_keys.single_arn]
        )
        _refuse_pending_keys(provider, kms_keys.client())
        svc = EncryptionService(cfg, provider=provider)
        svc.new_key_arn = new_key  # type: ignore[attr-defined]
        opened.append(svc)
        return svc

    yield make
    for svc in opened:
        svc.close()


def _wrapping_keys(svc: EncryptionService) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for batch in svc.store.iter_deks():
        for record in batch:
            out.setdefault(record.context["tenant_id"], set()).add(record.wrapping_key_id)
    return out


def test_the_tenant_key_wraps_its_keys_and_outlives_a_rewrap(
    services: Callable[[], EncryptionService], kms_keys: Any
) -> None:
    svc = services()
    mine, theirs = svc.encrypt(b"a", ACME), svc.encrypt(b"b", OTHER)
    branch = svc.encrypt(b"c", ACME, key_reference="branch")
    inline = svc.encrypt(b"d", ACME, key_reference="inline")
    assert _wrapping_keys(svc) == {"acme": {kms_keys.single_arn}, "other": {kms_keys.primary_arn}}
    records = [r for batch in svc._runtime.branches.rows.iter_all() for r in batch]
    assert {(r.scope, r.wrapping_key_id) for r in records} == {("tenant:acme", kms_keys.single_arn)}
    assert parse_envelope(inline).key_id == kms_keys.single_arn
    # A rewrap to a new primary key moves everyone else's keys, never the tenant's.
    svc.rewrap(svc.new_key_arn)  # type: ignore[attr-defined]
    assert _wrapping_keys(svc) == {
        "acme": {kms_keys.single_arn},
        "other": {svc.new_key_arn},  # type: ignore[attr-defined]
    }
    fresh = services()
    assert [fresh.decrypt(e, c) for e, c in ((mine, ACME), (theirs, OTHER))] == [b"a", b"b"]
    assert fresh.decrypt(branch, ACME) == b"c" and fresh.decrypt(inline, ACME) == b"d"


def test_erasure_schedules_the_tenant_key_deletion_and_a_backup_stays_dead(
    services: Callable[[], EncryptionService], kms_keys: Any
) -> None:
    svc = services()
    inline = svc.encrypt(b"d", ACME, key_reference="inline")
    theirs = svc.encrypt(b"b", OTHER)
    svc.encrypt(b"a", ACME)
    # A backup of the key store, taken before the erasure: the tenant's wrapped DEK.
    backup = next(r for b in svc.store.iter_deks() for r in b if r.context["tenant_id"] == "acme")
    report = svc.erase_tenant("acme", schedule_kms_key_deletion=True, pending_window_days=7)
    assert report.stored_deks_destroyed == 1 and report.kms_key_deletion_date
    state = kms_keys.client().describe_key(KeyId=kms_keys.single_arn)["KeyMetadata"]["KeyState"]
    assert state == "PendingDeletion"
    fresh = services()
    # The restored row no longer unwraps, nor does the inline envelope: the key is gone.
    with pytest.raises(KmsKeyDisabledError):
        fresh.provider.decrypt_data_key(
            backup.wrapping_key_id,
            backup.wrapped,
            EncryptionContext.from_mapping(backup.context),
            fresh._runtime.limits,
        )
    with pytest.raises(KmsKeyDisabledError):
        fresh.decrypt(inline, ACME)
    assert fresh.decrypt(theirs, OTHER) == b"b"


def test_a_deletion_request_without_a_tenant_key_changes_nothing(
    services: Callable[[], EncryptionService], kms_keys: Any
) -> None:
    svc = services()
    env = svc.encrypt(b"b", OTHER)
    for kwargs in (
        {"schedule_kms_key_deletion": True},  # "other" has no key of its own
        {"schedule_kms_key_deletion": True, "pending_window_days": 3},
    ):
        tenant = "other" if len(kwargs) == 1 else "acme"
        with pytest.raises(InvalidArgumentError):
            svc.erase_tenant(tenant, **kwargs)  # type: ignore[arg-type]
    assert svc.decrypt(env, OTHER) == b"b" and not svc.is_erased(env)
    state = kms_keys.client().describe_key(KeyId=kms_keys.single_arn)["KeyMetadata"]["KeyState"]
    assert state == "Enabled"


def test_tenant_keys_are_validated_and_allowed(tmp_path: Path, kms_keys: Any) -> None:
    with pytest.raises(ConfigurationError, match="aws-kms"):
        EncryptionServiceConfig(data_dir=tmp_path, tenant_kms_keys={"acme": kms_keys.single_arn})
    with pytest.raises(ConfigurationError, match="ARN"):
        EncryptionServiceConfig(
            provider="aws-kms",
            kms_key_ids=(kms_keys.primary_arn,),
            tenant_kms_keys={"acme": "alias/acme"},
            data_dir=tmp_path,
        )
    cfg = EncryptionServiceConfig.from_env(
        {
            "GLC_PROVIDER": "aws-kms",
            "GLC_KMS_KEY_IDS": kms_keys.primary_arn,
            "GLC_KMS_ENDPOINT_URL": kms_keys.endpoint,
            "GLC_TENANT_KMS_KEYS": f"acme={kms_keys.single_arn}",
            "GLC_DATA_DIR": str(tmp_path),
        }
    )
    assert cfg.tenant_kms_keys == {"acme": kms_keys.single_arn}
    # The composition root puts the tenant key on the provider's allow-list.
    provider: Any = build_provider(cfg)
    assert provider._resolve(kms_keys.single_arn)[0].raw == kms_keys.single_arn
