"""Typed service statistics: the value types, and what a service's snapshot reports."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.exceptions import DecryptionError
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.stats import CacheCounters, LatencyHistogram, OperationCount, ServiceStats


def _stats(operations: dict[str, dict[str, OperationCount]]) -> ServiceStats:
    return ServiceStats(
        operations=operations,
        failures={},
        encrypt_cache=CacheCounters(),
        decrypt_cache=CacheCounters(),
        oldest_dek_age_seconds=0.0,
        max_budget_used=0.0,
        latency={},
    )


def test_cache_counters_from_a_rust_mapping_default_what_is_missing() -> None:
    counters = CacheCounters.from_mapping({"hits": 5, "misses": 2, "size": 1, "unknown": 9})
    assert counters == CacheCounters(hits=5, misses=2, evictions=0, expirations=0, size=1)
    assert CacheCounters.from_mapping({}) == CacheCounters()


def test_cache_counters_are_ints_whatever_the_mapping_held() -> None:
    counters = CacheCounters.from_mapping({"hits": True, "evictions": 3.0})  # type: ignore[dict-item]
    assert (counters.hits, counters.evictions) == (1, 3)
    assert type(counters.hits) is int and type(counters.evictions) is int


def test_the_value_types_are_frozen() -> None:
    values: list[object] = [
        OperationCount(count=1, bytes=2),
        CacheCounters(),
        LatencyHistogram(
            bounds=(0.1,), cumulative=(1,), sum_seconds=0.05, sampled=1, sample_rate=16
        ),
        _stats({}),
    ]
    for value in values:
        name = dataclasses.fields(value)[0].name  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)


def test_operation_total_sums_every_data_class_of_one_operation() -> None:
    stats = _stats(
        {
            "encrypt": {"pii": OperationCount(3, 30), "log": OperationCount(4, 1)},
            "decrypt": {"pii": OperationCount(1, 30)},
        }
    )
    assert stats.operation_total("encrypt") == 7
    assert stats.operation_total("decrypt") == 1
    assert stats.operation_total("rewrap") == 0


def test_a_service_snapshot_counts_operations_failures_and_cache_use(tmp_path: Path) -> None:
    svc = EncryptionService.init_local(tmp_path)
    try:
        pii = EncryptionContext(tenant_id="t", data_class="pii")
        log = EncryptionContext(tenant_id="t", data_class="log")
        sealed = svc.encrypt(b"abc", pii)
        svc.encrypt(b"de", log)
        assert svc.decrypt(sealed, pii) == b"abc"
        with pytest.raises(DecryptionError):
            svc.decrypt(sealed[:-1] + bytes([sealed[-1] ^ 1]), pii)
        stats = svc.stats()
    finally:
        svc.close()
    assert isinstance(stats, ServiceStats)
    assert stats.operations["encrypt"]["pii"] == OperationCount(count=1, bytes=3)
    assert stats.operations["encrypt"]["log"] == OperationCount(count=1, bytes=2)
    assert stats.operation_total("encrypt") == 2
    assert stats.operation_total("decrypt") == 1
    assert stats.failures == {("decrypt", "DecryptionError"): 1}
    assert isinstance(stats.encrypt_cache, CacheCounters)
    assert stats.encrypt_cache.size == 2
    assert stats.oldest_dek_age_seconds >= 0.0
    assert 0.0 < stats.max_budget_used < 1.0
    for histogram in stats.latency.values():
        assert len(histogram.cumulative) == len(histogram.bounds) + 1
        assert list(histogram.bounds) == sorted(histogram.bounds)
        assert histogram.sample_rate >= 1
