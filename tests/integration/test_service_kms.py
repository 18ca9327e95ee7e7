"""EncryptionService over AWS KMS (the moto server, over HTTP) with a PostgreSQL or SQLite key
store: the economy of KMS calls, context enforcement at KMS, replica failover, rewrap."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import DecryptionError
from greenlang_crypto.keys.store import open_key_store
from greenlang_crypto.service import EncryptionService

pytestmark = pytest.mark.integration
CTX = EncryptionContext("tenant-1", "pii")


def _store_url(tmp_path: Path) -> str:
    # The real PostgreSQL when the test command started it; SQLite otherwise.
    return os.environ.get("GLC_PG_URL") or f"sqlite:///{tmp_path / 'ks.db'}"


def _reset_pg(url: str) -> None:
    if url.startswith("postgresql"):
        store = open_key_store(url)
        with store.db.transaction() as cur:
            cur.execute("TRUNCATE glc_deks, glc_key_versions, glc_keyring")
        store.close()


_OPEN: list[EncryptionService] = []


@pytest.fixture(autouse=True)
def _close_services() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def make_service(tmp_path: Path, provider: Any, keys: tuple[str, ...]) -> EncryptionService:
    cfg = EncryptionServiceConfig(
        provider="aws-kms", kms_key_ids=keys, key_store_url=_store_url(tmp_path), data_dir=tmp_path
    )
    svc = EncryptionService(cfg, provider=provider)
    _OPEN.append(svc)
    return svc


def test_service_over_kms(tmp_path: Path, kms_keys: Any, make_provider: Callable[..., Any]) -> None:
    _reset_pg(_store_url(tmp_path))
    keys = (kms_keys.primary_arn, kms_keys.replica_arn)
    provider = make_provider(keys=list(keys))
    sent: list[str] = []

    def count(request: Any, **_: Any) -> None:
        # Counted at the client: every HTTP request botocore actually sends.
        sent.append(request.headers.get("X-Amz-Target", b"").decode())

    for client in provider.clients.values():
        client.meta.events.register("before-send.kms", count)
    svc = make_service(tmp_path, provider, keys)
    envs = [svc.encrypt(b"v%d" % i, CTX) for i in range(10_000)]
    assert sent == ["TrentService.GenerateDataKey"]
    inline = svc.encrypt(b"blob", CTX, key_reference="inline")
    assert provider.stats["GenerateDataKey.ok"] == 2  # one per (context, reference kind)
    cold_provider = make_provider(keys=list(keys))
    for client in cold_provider.clients.values():
        client.meta.events.register("before-send.kms", count)
    sent.clear()
    cold = make_service(tmp_path, cold_provider, keys)
    assert all(cold.decrypt(e, CTX) == b"v%d" % i for i, e in enumerate(envs))
    assert sent == ["TrentService.Decrypt"]
    stats = cold.status().cache["decrypt"]
    assert stats["hits"] / (stats["hits"] + stats["misses"]) >= 0.99
    assert cold.decrypt(inline, CTX) == b"blob"
    assert cold.provider.stats["Decrypt.ok"] == 2  # type: ignore[attr-defined]
    # A wrong context fails at KMS (cold cache) and at the AAD (warm cache).
    colder = make_service(tmp_path, make_provider(keys=list(keys)), keys)
    with pytest.raises(DecryptionError):
        colder.decrypt(envs[0], EncryptionContext("tenant-2", "pii"))
    with pytest.raises(DecryptionError):
        cold.decrypt(envs[0], EncryptionContext("tenant-2", "pii"))
    assert parse_envelope(inline).key_id == kms_keys.primary_arn


def test_service_decrypts_through_replica(
    tmp_path: Path, kms_keys: Any, make_provider: Callable[..., Any]
) -> None:
    _reset_pg(_store_url(tmp_path))
    keys = (kms_keys.primary_arn, kms_keys.replica_arn)
    svc = make_service(tmp_path, make_provider(keys=list(keys)), keys)
    env = svc.encrypt(b"dr", CTX, key_reference="inline")
    outage = make_provider(keys=list(keys), endpoint_urls={"us-east-1": "http://127.0.0.1:1"})
    dr = make_service(tmp_path, outage, keys)
    assert dr.decrypt(env, CTX) == b"dr"


def test_rotation_on_demand_through_kms(
    tmp_path: Path, kms_keys: Any, make_provider: Callable[..., Any]
) -> None:
    _reset_pg(_store_url(tmp_path))
    keys = (kms_keys.single_arn,)
    svc = make_service(tmp_path, make_provider(keys=list(keys)), keys)
    old = svc.encrypt(b"before", CTX)
    result = svc.rotate(rotate_kms_key=True)
    assert result.new_version == 2 and result.wrapping_key_id == kms_keys.single_arn
    rotations = kms_keys.client().list_key_rotations(KeyId=kms_keys.single_arn)["Rotations"]
    assert len(rotations) == 1
    new = svc.encrypt(b"after", CTX)
    assert parse_envelope(new).key_version == 2
    cold = make_service(tmp_path, make_provider(keys=list(keys)), keys)
    assert cold.decrypt(old, CTX) == b"before" and cold.decrypt(new, CTX) == b"after"


def test_alias_repointing_is_picked_up_within_ttl(
    tmp_path: Path, kms_keys: Any, make_provider: Callable[..., Any]
) -> None:
    # After an alias is re-pointed, new encryptions use the new key within the cache TTL.
    _reset_pg(_store_url(tmp_path))
    client = kms_keys.client()
    client.create_alias(AliasName="alias/glc-app", TargetKeyId=kms_keys.single_arn)
    other = client.create_key(Description="second")["KeyMetadata"]["Arn"]
    cfg = EncryptionServiceConfig(
        provider="aws-kms",
        kms_key_ids=("alias/glc-app",),
        kms_region="us-east-1",
        key_store_url=_store_url(tmp_path),
        data_dir=tmp_path,
        cache_ttl_seconds=0.5,
        refresh_ahead_fraction=1.0,
    )
    svc = EncryptionService(cfg, provider=make_provider(keys=["alias/glc-app"], region="us-east-1"))
    _OPEN.append(svc)
    first = svc.encrypt(b"a", CTX, key_reference="inline")
    client.update_alias(AliasName="alias/glc-app", TargetKeyId=other)
    still_cached = svc.encrypt(b"b", CTX, key_reference="inline")
    time.sleep(0.6)
    after = svc.encrypt(b"c", CTX, key_reference="inline")
    assert parse_envelope(first).key_id == kms_keys.single_arn
    assert parse_envelope(still_cached).key_id == kms_keys.single_arn
    assert parse_envelope(after).key_id == other
    for env, pt in ((first, b"a"), (still_cached, b"b"), (after, b"c")):
        assert svc.decrypt(env, CTX) == pt
