"""The observer protocol: the service satisfies it, its system-key handle round-trips a key
bound to its context, and a handle is a frozen value."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import DecryptionError
from greenlang_crypto.observing import ObservedService, SinkStateSource, SystemKeyHandle
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from tests.observed import StubConfig, local_system_keys, observed_stub

CTX = EncryptionContext(tenant_id="_system", data_class="audit")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EncryptionService]:
    LocalKeyProvider(tmp_path).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=tmp_path))
    yield svc
    svc.close()


def test_the_service_is_an_observed_service(service: EncryptionService) -> None:
    assert isinstance(service, ObservedService)
    assert isinstance(service.system_keys, SystemKeyHandle)
    assert service.system_keys.provider_name == service.provider_name == "local"


def test_the_handle_round_trips_a_system_key_bound_to_its_context(
    service: EncryptionService,
) -> None:
    keys = service.system_keys
    made = keys.generate(CTX)
    back = keys.unwrap(keys.provider_name, made.key_id, made.wrapped, CTX)
    label = b"observing-test"
    assert back.derive_index_key(label).compute(b"x") == made.key.derive_index_key(label).compute(
        b"x"
    )
    other_ctx = EncryptionContext(tenant_id="_system", data_class="other")
    with pytest.raises(DecryptionError):
        keys.unwrap(keys.provider_name, made.key_id, made.wrapped, other_ctx)
    with pytest.raises(DecryptionError):
        keys.unwrap("aws-kms", made.key_id, made.wrapped, CTX)


def test_a_handle_is_frozen(tmp_path: Path) -> None:
    keys = local_system_keys(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        keys.provider_name = "aws-kms"  # type: ignore[misc]


def test_an_object_without_a_system_key_handle_is_not_observed(tmp_path: Path) -> None:
    stub = observed_stub(tmp_path)
    assert isinstance(stub, ObservedService)

    class _NoKeys:
        config = StubConfig(tmp_path)
        per_operation_events = False
        stats = stub.stats
        branch_key_stats = stub.branch_key_stats
        key_cache_stats = stub.key_cache_stats

    assert not isinstance(_NoKeys(), ObservedService)
    assert not isinstance(stub, SinkStateSource)
