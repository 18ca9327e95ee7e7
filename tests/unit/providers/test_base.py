"""The key-provider protocol: its value types and the capabilities a provider declares."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import _core
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.providers.aws_kms import AwsKmsKeyProvider
from greenlang_crypto.providers.base import (
    CreatesMasterKeys,
    EnforcesKeyAllowList,
    GeneratedDataKey,
    KeyLimits,
    KeyProvider,
    NamesCurrentKey,
    ProviderHealth,
    ReportsRotationStatus,
    RotatesKeyOnDemand,
)
from greenlang_crypto.providers.local import LocalKeyProvider

ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CAPABILITIES = (
    NamesCurrentKey,
    CreatesMasterKeys,
    RotatesKeyOnDemand,
    ReportsRotationStatus,
    EnforcesKeyAllowList,
)


def test_key_limits_default_to_the_gcm_bounds() -> None:
    limits = KeyLimits()
    assert limits.max_messages == 2**32  # NIST SP 800-38D 8.3
    assert limits.max_bytes == 2**64 - 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_messages = 1  # type: ignore[misc]


def test_a_generated_key_never_shows_its_key_or_wrapped_form() -> None:
    raw, wrapped = os.urandom(32), b"\xa5WRAPPED-DEK-BYTES\x5a"
    generated = GeneratedDataKey(key=_core.DataKey.from_bytes(raw), wrapped=wrapped, key_id="k-1")
    text = repr(generated)
    assert text == "GeneratedDataKey(key_id='k-1')"
    assert raw.hex() not in text and "WRAPPED" not in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        generated.key_id = "other"  # type: ignore[misc]


def test_provider_health_is_a_plain_value() -> None:
    assert ProviderHealth(ok=False, detail="kms unavailable") == ProviderHealth(
        False, "kms unavailable"
    )
    assert ProviderHealth(True, "ok") != ProviderHealth(False, "ok")


class Partial:
    """Has a name and generates, but cannot unwrap, rewrap or report health."""

    name = "partial"

    def generate_data_key(self, key_id: str, context: Any, limits: Any) -> Any:
        raise NotImplementedError


def test_the_protocol_needs_every_method(tmp_path: Path) -> None:
    assert isinstance(LocalKeyProvider(tmp_path), KeyProvider)
    assert not isinstance(Partial(), KeyProvider)
    assert not isinstance(object(), KeyProvider)


def _capabilities(provider: object) -> set[str]:
    return {cap.__name__ for cap in CAPABILITIES if isinstance(provider, cap)}


def test_the_local_provider_names_and_creates_its_master_keys(tmp_path: Path) -> None:
    assert _capabilities(LocalKeyProvider(tmp_path)) == {"NamesCurrentKey", "CreatesMasterKeys"}


def test_the_kms_provider_rotates_reports_and_enforces_its_allow_list() -> None:
    provider = AwsKmsKeyProvider(
        [ARN], aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    assert isinstance(provider, KeyProvider)
    assert _capabilities(provider) == {
        "RotatesKeyOnDemand",
        "ReportsRotationStatus",
        "EnforcesKeyAllowList",
    }


def test_a_local_provider_round_trips_a_key_through_the_protocol(tmp_path: Path) -> None:
    provider: KeyProvider = LocalKeyProvider(tmp_path)
    assert isinstance(provider, CreatesMasterKeys)
    key_id = provider.create_master_key()
    ctx = EncryptionContext(tenant_id="t", data_class="pii")
    limits = KeyLimits(max_messages=10, max_bytes=1000)
    generated = provider.generate_data_key(key_id, ctx, limits)
    assert generated.key_id == key_id
    unwrapped = provider.decrypt_data_key(key_id, generated.wrapped, ctx, limits)
    assert _core.export_key_bytes(unwrapped) == _core.export_key_bytes(generated.key)
    assert provider.health().ok is True
