"""The fleet's Redis cache of wrapped key records, over a stand-in client: epochs, outages."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from greenlang_crypto import _forks
from greenlang_crypto._core import DataKey
from greenlang_crypto.keys.store import DekRecord
from greenlang_crypto.redis_cache import (
    RedisKeyCache,
    SharedEntry,
    dek_record_from_json,
    dek_record_to_json,
)

RECORD = {"version": 3, "wrapped": "ab01", "wrapping_key_id": "local:1"}
#: The key RECORD stands for: the entries' MACs derive from it.
KEY = DataKey.generate()


def record_of(entry: SharedEntry | None) -> dict[str, Any] | None:
    """The record of an entry whose MAC holds under KEY (None for no entry)."""
    if entry is None:
        return None
    assert entry.verify(KEY)
    return entry.record


class FakeClient:
    """GET / SET / DELETE on a dict; ``fail`` makes every call raise that exception."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.fail: Exception | None = None

    def _check(self, *call: Any) -> None:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail

    def get(self, name: str) -> Any:
        self._check("get", name)
        return self.data.get(name)

    def set(self, name: str, value: str, *, px: int) -> bool:
        self._check("set", name, px)
        self.data[name] = value.encode()
        return True

    def delete(self, *names: str) -> int:
        self._check("delete", *names)
        return sum(self.data.pop(n, None) is not None for n in names)


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def cache(client: FakeClient) -> RedisKeyCache:
    # A backoff far longer than any test: while it runs, Redis is not asked again.
    return RedisKeyCache(client, prefix="t:", ttl_seconds=2.5, backoff_seconds=3600.0)


@pytest.fixture
def eager(client: FakeClient) -> RedisKeyCache:
    """A cache that asks Redis again right after an error (no backoff)."""
    return RedisKeyCache(client, prefix="t:", backoff_seconds=0.0)


def test_a_record_written_at_an_epoch_is_served_at_that_epoch_or_below(
    cache: RedisKeyCache, client: FakeClient
) -> None:
    cache.put("branch:1", RECORD, epoch=7, key=KEY)
    assert client.calls == [("set", "t:branch:1", 2500)]
    stored = json.loads(client.data["t:branch:1"])
    assert stored["epoch"] == 7 and stored["record"] == RECORD and len(stored["tag"]) == 64
    assert record_of(cache.get("branch:1", min_epoch=7)) == RECORD
    # A reader behind the writer takes the entry only once the key store confirms epoch 7.
    assert cache.get("branch:1", min_epoch=3) is None
    assert record_of(cache.get("branch:1", min_epoch=3, confirm_epoch=lambda e: e <= 7)) == RECORD
    assert cache.get("branch:1", min_epoch=3, confirm_epoch=lambda e: e <= 6) is None
    assert cache.stats() == {"write": 1, "hit": 2, "unconfirmed": 2}


def test_a_record_from_before_a_key_change_is_stale(cache: RedisKeyCache) -> None:
    cache.put("dek:9", RECORD, epoch=4, key=KEY)
    assert cache.get("dek:9", min_epoch=5) is None
    assert cache.stats() == {"write": 1, "stale": 1}


def test_a_missing_entry_is_a_miss(cache: RedisKeyCache) -> None:
    assert cache.get("dek:none", min_epoch=0) is None
    assert cache.stats() == {"miss": 1}


def test_the_ttl_is_whole_milliseconds_and_at_least_one(client: FakeClient) -> None:
    RedisKeyCache(client, ttl_seconds=0.0001).put("k", RECORD, 1, key=KEY)
    assert client.calls[-1] == ("set", "glc:keys:k", 1)


@pytest.mark.parametrize(
    "stored",
    [
        b"not json",
        b'{"record": {}}',
        b'{"epoch": "x", "record": {}}',
        b'{"epoch": 1, "record": [1, 2]}',
        b'{"epoch": 1}',
        b"[1]",
    ],
)
def test_a_damaged_entry_is_an_error_and_a_miss_without_backing_off(
    cache: RedisKeyCache, client: FakeClient, stored: bytes
) -> None:
    client.data["t:k"] = stored
    assert cache.get("k", min_epoch=0) is None
    assert cache.stats() == {"error": 1}
    cache.put("k", RECORD, 1, key=KEY)  # Redis itself is fine: the next call still goes there
    assert record_of(cache.get("k", min_epoch=1)) == RECORD


def test_an_outage_costs_one_call_then_the_cache_stays_away_for_the_backoff(
    cache: RedisKeyCache, client: FakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client.fail = ConnectionError("SET t:k secret-looking-argument")
    with caplog.at_level(logging.WARNING, logger="greenlang_crypto.redis_cache"):
        assert cache.get("k", min_epoch=0) is None
    assert [r.getMessage() for r in caplog.records] == [
        "redis key cache unavailable, using the key store: ConnectionError"
    ]
    calls = len(client.calls)
    cache.put("k", RECORD, 1, key=KEY)
    assert cache.get("k", min_epoch=0) is None
    cache.delete(["k"])
    assert len(client.calls) == calls  # nothing sent while backing off
    assert cache.stats() == {"error": 1, "skipped": 3}


def test_after_the_backoff_the_cache_is_used_again(
    eager: RedisKeyCache, client: FakeClient
) -> None:
    client.fail = ConnectionError("down")
    assert eager.get("k", min_epoch=0) is None
    client.fail = None
    eager.put("k", RECORD, 1, key=KEY)
    assert record_of(eager.get("k", min_epoch=1)) == RECORD
    assert eager.stats() == {"error": 1, "write": 1, "hit": 1}


def test_failed_writes_and_deletes_are_swallowed_and_counted(
    eager: RedisKeyCache, client: FakeClient
) -> None:
    client.fail = TimeoutError("slow")
    eager.put("k", RECORD, 1, key=KEY)
    assert eager.stats() == {"error": 1}
    eager.delete(["a", "b"])
    assert eager.stats() == {"error": 2}
    assert client.calls == [("set", "t:k", 300_000), ("delete", "t:a", "t:b")]


def test_delete_removes_prefixed_names_and_sends_nothing_for_none(
    cache: RedisKeyCache, client: FakeClient
) -> None:
    cache.put("a", RECORD, 1, key=KEY)
    cache.put("b", RECORD, 1, key=KEY)
    client.calls.clear()
    cache.delete([])
    assert client.calls == []
    cache.delete(["a", "b"])
    assert client.calls == [("delete", "t:a", "t:b")]
    assert client.data == {}


def test_from_url_builds_a_client_with_short_timeouts_and_no_retries() -> None:
    pytest.importorskip("redis")
    cache = RedisKeyCache.from_url("redis://127.0.0.1:1/0", ttl_seconds=9, backoff_seconds=1)
    kwargs = cache._client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.2
    assert kwargs["socket_connect_timeout"] == 0.2
    assert cache._ttl_ms == 9000 and cache._backoff == 1
    # Nothing listens on port 1: the first call is one quick error, then a backoff.
    assert cache.get("k", min_epoch=0) is None
    assert cache.stats() == {"error": 1}


def test_the_lock_is_renewed_in_a_forked_child(cache: RedisKeyCache) -> None:
    assert _forks._lock_owners[cache] == ("_lock",)


def test_repr_shows_the_prefix_and_counters_only(cache: RedisKeyCache) -> None:
    cache.put("k", {"wrapped": "deadbeef"}, 1, key=KEY)
    text = repr(cache)
    assert text == "RedisKeyCache(prefix='t:', outcomes={'write': 1})"


DEK = DekRecord(
    dek_id=12,
    key_version=3,
    provider="aws-kms",
    wrapping_key_id="arn:aws:kms:us-east-1:123456789012:key/k",
    wrapped=b"\x00\x01wrapped\xff",
    context={"tenant_id": "acme", "data_class": "pii"},
    context_digest=bytes(range(32)),
    created_at=1733500000.25,
)


def test_a_dek_record_round_trips_through_json() -> None:
    data = dek_record_to_json(DEK)
    assert data["wrapped"] == "000177726170706564ff"
    assert json.loads(json.dumps(data)) == data
    assert dek_record_from_json(json.loads(json.dumps(data))) == DEK


@pytest.mark.parametrize(
    "change",
    [
        {"wrapped": "not hex"},
        {"context_digest": "zz"},
        {"context": ["tenant_id"]},
        {"dek_id": "twelve"},
        {"created_at": None},
    ],
)
def test_a_damaged_dek_entry_reads_as_none(change: dict[str, Any]) -> None:
    assert dek_record_from_json({**dek_record_to_json(DEK), **change}) is None


def test_a_dek_entry_missing_a_field_or_absent_reads_as_none() -> None:
    data = dek_record_to_json(DEK)
    del data["provider"]
    assert dek_record_from_json(data) is None
    assert dek_record_from_json(None) is None


@pytest.mark.parametrize(
    "edit",
    [
        lambda e: {**e, "epoch": e["epoch"] + 5},  # re-stamped to look newer
        lambda e: {**e, "record": {**e["record"], "wrapping_key_id": "local:2"}},
        lambda e: {**e, "tag": "00" * 32},  # rebuilt without the key (from a backup)
    ],
)
def test_an_edited_entry_does_not_authenticate(
    cache: RedisKeyCache, client: FakeClient, edit: Any
) -> None:
    cache.put("branch:1", RECORD, 7, key=KEY)
    client.data["t:branch:1"] = json.dumps(edit(json.loads(client.data["t:branch:1"]))).encode()
    entry = cache.get("branch:1", min_epoch=7, confirm_epoch=lambda e: True)
    assert entry is not None and not entry.verify(KEY)


def test_an_entry_moved_to_another_name_or_checked_with_another_key_fails(
    cache: RedisKeyCache, client: FakeClient
) -> None:
    cache.put("branch:current:1:tenant:a", RECORD, 7, key=KEY)
    client.data["t:branch:current:1:tenant:b"] = client.data["t:branch:current:1:tenant:a"]
    moved = cache.get("branch:current:1:tenant:b", min_epoch=7)
    assert moved is not None and not moved.verify(KEY)
    same = cache.get("branch:current:1:tenant:a", min_epoch=7)
    assert same is not None and same.verify(KEY) and not same.verify(DataKey.generate())
    cache.reject()
    assert cache.stats()["forged"] == 1
