"""Key lifecycle in one process: retirement ordering, rewrap history, a monotonic minimum,
atomic batch reservations, key lifetime, forged header fields, the decrypt path's refusals,
key-change guards, and several instances sharing one SQLite key store."""

from __future__ import annotations

import contextlib
import gc
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto._core import DataKey, EnvelopeSealer, live_data_keys
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import (
    AuditSinkUnavailableError,
    DecryptionError,
    GreenlangCryptoError,
    KeyNotFoundError,
    KeyRetiredError,
    KeyStateError,
)
from greenlang_crypto.providers.base import KeyLimits
from greenlang_crypto.service import EncryptionService
from tests.unit.test_service import CountingProvider

CTX = EncryptionContext(tenant_id="t1", data_class="pii")
_OPEN: list[EncryptionService] = []


@pytest.fixture(autouse=True)
def _close_services() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def make(tmp_path: Path, **cfg: Any) -> tuple[EncryptionService, CountingProvider]:
    provider = CountingProvider(tmp_path)
    if not provider.versions():
        provider.create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=tmp_path, **cfg), provider=provider)
    _OPEN.append(svc)
    return svc, provider


class BlockingProvider(CountingProvider):
    """The local provider, whose DEK unwraps wait for a signal (a decrypt held in flight)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.entered = threading.Event()
        self.release = threading.Event()

    def decrypt_data_key(self, *a: Any, **kw: Any) -> Any:
        key = super().decrypt_data_key(*a, **kw)
        self.entered.set()
        assert self.release.wait(10)
        return key


# -- retirement never lets a key back into a cache -----------------------------------------


def test_decrypt_in_flight_during_retirement_does_not_recache_the_key(tmp_path: Path) -> None:
    setup, _ = make(tmp_path)
    envelope = setup.encrypt(b"old", CTX, key_reference="inline")
    setup.rotate()
    setup.close()
    _OPEN.remove(setup)
    provider = BlockingProvider(tmp_path)
    svc = EncryptionService(EncryptionServiceConfig(data_dir=tmp_path), provider=provider)
    _OPEN.append(svc)
    outcome: list[object] = []

    def decrypt() -> None:
        try:
            outcome.append(svc.decrypt(envelope, CTX))
        except GreenlangCryptoError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=decrypt)
    worker.start()
    assert provider.entered.wait(10)  # the version check has passed; the unwrap is running
    svc.retire_versions_below(2)
    provider.release.set()
    worker.join(10)
    # The key fetched for a now-retired version is refused, not cached ...
    assert len(outcome) == 1 and isinstance(outcome[0], KeyRetiredError)
    # ... so the next decrypt of that version is refused too, instead of served from cache.
    with pytest.raises(KeyRetiredError):
        svc.decrypt(envelope, CTX)


def test_cache_hits_recheck_the_minimum_version(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    envelope = svc.encrypt(b"old", CTX, key_reference="inline")
    assert svc.decrypt(envelope, CTX) == b"old"  # the DEK is now cached
    ref_id = parse_envelope(envelope).key_ref_id
    key = svc._dec_cache.get(ref_id)
    assert isinstance(key, DataKey)
    svc.rotate()
    svc.store.retire_below(2)  # as another process would
    svc.refresh_keyring()
    # A key of the retired version put back into the cache (the late insert of a racing
    # decrypt) is still never served: hits compare the envelope's version with the floor.
    svc._dec_cache.put(ref_id, key, "pii")
    with pytest.raises(KeyRetiredError):
        svc.decrypt(envelope, CTX)
    with pytest.raises(KeyRetiredError):
        svc.value_decryptor(CTX)(envelope)  # the per-row opener checks the same floor
    assert svc._dec_cache.raise_min_key_version(1) == 2  # the floor never goes down


# -- rewrap keeps the wrapping-key history ------------------------------------------------


def test_rewrap_keeps_older_inline_envelopes_readable(tmp_path: Path) -> None:
    svc, provider = make(tmp_path)
    inline = svc.encrypt(b"inline", CTX, key_reference="inline")
    stored = svc.encrypt(b"stored", CTX)
    old_key = parse_envelope(inline).key_id
    new_key = provider.create_master_key()
    svc.rewrap(new_key)
    cold, _cold_provider = make(tmp_path)
    assert cold.decrypt(inline, CTX) == b"inline"
    assert cold.decrypt(stored, CTX) == b"stored"
    # Destroying the old wrapping key is explicit, and only then do those envelopes stop.
    assert old_key is not None
    assert svc.destroy_wrapping_key(old_key) == 1
    colder, _ = make(tmp_path)
    with pytest.raises(DecryptionError):
        colder.decrypt(inline, CTX)
    assert colder.decrypt(stored, CTX) == b"stored"
    cold.refresh_keyring()
    with pytest.raises(DecryptionError):
        cold.decrypt(inline, CTX)  # the cached DEK went with the destroyed key
    with pytest.raises(KeyStateError):
        svc.destroy_wrapping_key(new_key)  # still in use


# -- the minimum decryption version only rises ----------------------------------------------


def test_minimum_decryption_version_only_rises(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    old = svc.encrypt(b"old", CTX, key_reference="inline")
    svc.rotate()
    svc.rotate()
    svc.retire_versions_below(2)
    svc.retire_versions_below(1)
    assert svc.store.min_decryption_version() == 2
    assert svc.status().min_decryption_version == 2
    assert svc.store.retire_below(1) == 2
    with pytest.raises(KeyRetiredError):
        svc.decrypt(old, CTX)
    cold, _ = make(tmp_path)
    assert cold.status().min_decryption_version == 2
    with pytest.raises(KeyRetiredError):
        cold.decrypt(old, CTX)


# -- batches reserve their whole budget atomically ------------------------------------------


def test_concurrent_batches_never_fail_spuriously(tmp_path: Path) -> None:
    svc, provider = make(tmp_path, max_messages_per_dek=1000)
    provider.delay = 0.005  # a KMS round trip: writers queue up behind each new DEK
    values = [b"v%d" % i for i in range(300)]

    def run(_: int) -> list[bytes]:
        out: list[bytes] = []
        for _ in range(40):
            out.extend(svc.encrypt_batch(values, CTX))
        return out

    # Switch threads as often as possible, so that a gap between a budget check and the
    # reservation it depends on is hit within a short run.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(run, range(12)))
    finally:
        sys.setswitchinterval(interval)
    envelopes = [e for r in results for e in r]
    assert len(envelopes) == 12 * 40 * 300
    sample = envelopes[::97]
    assert svc.decrypt_batch(sample, CTX) == [values[(i * 97) % 300] for i in range(len(sample))]
    with pytest.raises(KeyStateError):
        svc.encrypt_batch([b"x"] * 1001, CTX)  # larger than any DEK's budget: a real error


# -- no key handle outlives the TTL, disable_cached_keys() or close() -----------------------


def _settle() -> int:
    gc.collect()
    return live_data_keys()


def _use_every_key_holder(svc: EncryptionService) -> None:
    for ref in ("stored", "inline"):
        svc.decrypt(svc.encrypt(b"x", CTX, key_reference=ref), CTX)
    svc.encrypt_batch([b"a", b"b"], CTX)
    svc.blind_index_key("users.email").compute(b"a@example.com")


def test_keys_are_released_after_the_ttl(tmp_path: Path) -> None:
    # The refresh period (at most the TTL) bounds how long an expired key can linger.
    svc, provider = make(tmp_path, cache_ttl_seconds=0.6)
    provider.health()  # loads the master key, which the provider keeps by design
    baseline = _settle()
    _use_every_key_holder(svc)
    assert _settle() > baseline
    deadline = time.monotonic() + 5
    while _settle() > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _settle() <= baseline


@pytest.mark.parametrize("how", ["disable_cached_keys", "close"])
def test_keys_are_released_by_disable_and_close(tmp_path: Path, how: str) -> None:
    svc, provider = make(tmp_path)
    provider.health()
    baseline = _settle()
    _use_every_key_holder(svc)
    assert _settle() > baseline
    getattr(svc, how)()
    assert _settle() <= baseline
    if how == "close":
        _OPEN.remove(svc)


# -- forged header fields map to typed errors -----------------------------------------------


@pytest.mark.parametrize("dek_id", [2**63, 2**63 + 1, 2**64 - 1])
def test_dek_id_beyond_63_bits_is_a_typed_error(tmp_path: Path, dek_id: int) -> None:
    svc, provider = make(tmp_path)
    forged = EnvelopeSealer(
        DataKey.generate(), key_version=1, context=CTX.canonical, dek_id=dek_id
    ).seal(b"x")
    with pytest.raises(KeyNotFoundError):
        svc.decrypt(forged, CTX)
    assert svc.store.get_dek(dek_id) is None
    assert provider.decrypt_calls == 0
    assert svc.stats().failures == {("decrypt", "KeyNotFoundError"): 1}


# -- the decrypt path's refusals happen before any provider call ----------------------------


def test_stored_dek_whose_version_disagrees_with_the_header_is_refused(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    genuine = svc.encrypt(b"v1 value", CTX)
    dek_id = parse_envelope(genuine).dek_id
    svc.rotate()
    forged = EnvelopeSealer(
        DataKey.generate(), key_version=2, context=CTX.canonical, dek_id=dek_id
    ).seal(b"x")
    cold, cold_provider = make(tmp_path)
    with pytest.raises(DecryptionError) as info:
        cold.decrypt(forged, CTX)
    assert type(info.value) is DecryptionError
    assert cold_provider.decrypt_calls == 0  # refused before the DEK was unwrapped
    assert cold.decrypt(genuine, CTX) == b"v1 value"
    assert cold_provider.decrypt_calls == 1


def test_stored_dek_whose_provider_disagrees_is_refused(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    genuine = svc.encrypt(b"value", CTX)
    db = sqlite3.connect(tmp_path / "keystore.db")
    with db:
        db.execute("UPDATE glc_deks SET provider = 'aws-kms'")
    db.close()
    cold, cold_provider = make(tmp_path)
    with pytest.raises(DecryptionError):
        cold.decrypt(genuine, CTX)
    assert cold_provider.decrypt_calls == 0


def test_inline_envelope_naming_a_foreign_provider_is_refused(tmp_path: Path) -> None:
    svc, provider = make(tmp_path)
    key_id = svc.versions()[0].wrapping_key_id
    generated = provider.generate_data_key(key_id, CTX, KeyLimits())
    forged = EnvelopeSealer(
        generated.key,
        key_version=1,
        context=CTX.canonical,
        provider="aws-kms",
        key_id=key_id,
        wrapped_dek=generated.wrapped,
    ).seal(b"x")
    with pytest.raises(DecryptionError) as info:
        svc.decrypt(forged, CTX)
    assert provider.decrypt_calls == 0
    assert key_id not in str(info.value)


def test_inline_envelope_naming_a_key_outside_the_keyring_is_refused(tmp_path: Path) -> None:
    svc, provider = make(tmp_path)
    # A master key the provider can use but the keyring never adopted: an envelope naming it
    # must not make the service use it.
    outside = provider.create_master_key()
    generated = provider.generate_data_key(outside, CTX, KeyLimits())
    forged = EnvelopeSealer(
        generated.key,
        key_version=1,
        context=CTX.canonical,
        provider="local",
        key_id=outside,
        wrapped_dek=generated.wrapped,
    ).seal(b"would decrypt")
    with pytest.raises(DecryptionError) as info:
        svc.decrypt(forged, CTX)
    assert provider.decrypt_calls == 0
    assert outside not in str(info.value)
    assert str(info.value) == str(DecryptionError())


# -- key-change guards (the audit log) ------------------------------------------------------


class RefusingGuard:
    """A guard whose intent record cannot be written: every key change must not happen."""

    def __init__(self) -> None:
        self.actions: list[str] = []

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        pass

    def key_change(
        self, action: str, details: Mapping[str, object]
    ) -> contextlib.AbstractContextManager[None]:
        self.actions.append(action)
        raise AuditSinkUnavailableError("sink down")


class RecordingGuard:
    """A guard that records intent and outcome of each key change."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, object]]] = []

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        pass

    @contextlib.contextmanager
    def key_change(self, action: str, details: Mapping[str, object]) -> Iterator[None]:
        self.records.append((action, "intent", dict(details)))
        try:
            yield
        except BaseException as exc:
            self.records.append((action, f"failure:{type(exc).__name__}", dict(details)))
            raise
        self.records.append((action, "success", dict(details)))


def _key_state(svc: EncryptionService) -> tuple[object, ...]:
    store = svc.store
    return (
        store.epoch(),
        store.versions(),
        store.min_decryption_version(),
        store.wrapping_keys(),
        store.index_keys(),
        store.count_deks_by_version(),
    )


def test_a_refusing_guard_stops_every_key_change(tmp_path: Path) -> None:
    svc, provider = make(tmp_path)
    svc.encrypt(b"x", CTX, key_reference="inline")
    svc.rotate()
    svc.rotate_index_key()
    svc.rotate_index_key()
    before = _key_state(svc)
    guard = RefusingGuard()
    svc.add_observer(guard)
    new_key = provider.create_master_key()
    attempts = [
        svc.rotate,
        lambda: svc.rewrap(new_key),
        lambda: svc.retire_versions_below(2, delete_stored_deks=True, force=True),
        svc.rotate_index_key,
        lambda: svc.retire_index_key(1),
        lambda: svc.destroy_wrapping_key("local:master-v1"),
    ]
    for attempt in attempts:
        with pytest.raises(AuditSinkUnavailableError):
            attempt()
    assert _key_state(svc) == before
    assert guard.actions == [
        "key_rotate",
        "key_rewrap",
        "key_retire",
        "index_key_rotate",
        "index_key_retire",
        "key_destroy",
    ]


def test_guards_see_intent_and_outcome(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    guard = RecordingGuard()
    svc.add_observer(guard)
    svc.rotate()
    with pytest.raises(KeyStateError):
        svc.retire_versions_below(5)
    svc.retire_versions_below(2, force=True)
    assert [(a, o) for a, o, _ in guard.records] == [
        ("key_rotate", "intent"),
        ("key_rotate", "success"),
        ("key_retire", "intent"),
        ("key_retire", "failure:KeyStateError"),
        ("key_retire", "intent"),
        ("key_retire", "success"),
    ]
    assert guard.records[-1][2]["force"] is True


def test_without_guards_key_changes_just_happen(tmp_path: Path) -> None:
    svc, _ = make(tmp_path)
    assert svc.rotate().new_version == 2


# -- several instances on one key store ----------------------------------------------------


def test_other_instances_converge_within_the_refresh_bound(tmp_path: Path) -> None:
    admin, _ = make(tmp_path, keyring_refresh_seconds=0.2)
    worker, _ = make(tmp_path, keyring_refresh_seconds=0.2)
    assert worker.primary_version == 1
    old = worker.encrypt(b"old", CTX, key_reference="inline")
    admin.rotate()
    deadline = time.monotonic() + 0.2 + 1.0  # the bound plus scheduling slack
    while worker.primary_version != 2:
        assert time.monotonic() < deadline, "rotation did not propagate"
        time.sleep(0.02)
    assert parse_envelope(worker.encrypt(b"new", CTX)).key_version == 2
    assert worker.decrypt(old, CTX) == b"old"  # the dual-key window
    # Each instance reports the epoch it runs; retiring is safe once all run the new primary.
    deadline = time.monotonic() + 2
    while admin.retirement_blockers(2):
        assert time.monotonic() < deadline, admin.retirement_blockers(2)
        time.sleep(0.05)
    admin.retire_versions_below(2)
    deadline = time.monotonic() + 0.2 + 1.0
    while worker.min_decryption_version != 2:
        assert time.monotonic() < deadline, "retirement did not propagate"
        time.sleep(0.02)
    with pytest.raises(KeyRetiredError):
        worker.decrypt(old, CTX)
    statuses = {i.instance_id: i for i in admin.status().instances}
    assert {admin.instance_id, worker.instance_id} <= set(statuses)


def test_retirement_is_refused_while_a_live_instance_runs_the_old_primary(tmp_path: Path) -> None:
    admin, _ = make(tmp_path, keyring_refresh_seconds=0.2)
    admin.rotate()
    # An instance that has not loaded the rotation yet (as its heartbeat says).
    admin.store.heartbeat(
        "laggard",
        host="elsewhere",
        pid=4242,
        epoch=0,
        primary_version=1,
        min_version=1,
        started_at=time.time(),
    )
    with pytest.raises(KeyStateError, match="elsewhere:4242"):
        admin.retire_versions_below(2)
    assert admin.min_decryption_version == 1
    admin.retire_versions_below(2, force=True)
    assert admin.min_decryption_version == 2


def test_a_dead_instance_does_not_block_retirement(tmp_path: Path) -> None:
    admin, _ = make(tmp_path, keyring_refresh_seconds=0.2)
    admin.rotate()
    admin.store.heartbeat(
        "gone",
        host="h",
        pid=1,
        epoch=0,
        primary_version=1,
        min_version=1,
        started_at=0.0,
    )
    db = sqlite3.connect(tmp_path / "keystore.db")
    with db:
        db.execute("UPDATE glc_instances SET last_seen = 0 WHERE instance_id = 'gone'")
    db.close()
    admin.retire_versions_below(2)
    assert admin.min_decryption_version == 2


def test_retirement_is_refused_while_job_ranges_are_unfinished(tmp_path: Path) -> None:
    admin, _ = make(tmp_path)
    admin.rotate()
    db = sqlite3.connect(tmp_path / "keystore.db")
    with db:
        db.execute("CREATE TABLE glc_job_ranges (job TEXT, range_id INTEGER, state TEXT)")
        db.execute("INSERT INTO glc_job_ranges VALUES ('reencrypt', 0, 'running')")
    with pytest.raises(KeyStateError, match="job range"):
        admin.retire_versions_below(2)
    with db:
        db.execute("UPDATE glc_job_ranges SET state = 'done'")
    db.close()
    admin.retire_versions_below(2)


def test_closed_instances_leave_the_instance_table(tmp_path: Path) -> None:
    admin, _ = make(tmp_path, keyring_refresh_seconds=0.2)
    other, _ = make(tmp_path, keyring_refresh_seconds=0.2)
    assert other.instance_id in {i.instance_id for i in admin.live_instances()}
    other.close()
    _OPEN.remove(other)
    assert other.instance_id not in {i.instance_id for i in admin.instances()}


# -- typed statistics and the front doors -----------------------------------------------------


def test_stats_is_one_typed_snapshot(tmp_path: Path) -> None:
    import dataclasses

    from greenlang_crypto.stats import CacheCounters, ServiceStats

    svc, provider = make(tmp_path, keyring_refresh_seconds=0)
    envs = [svc.encrypt(b"x" * n, CTX) for n in (10, 20, 30)]
    assert svc.decrypt(envs[0], CTX) == b"x" * 10
    with pytest.raises(DecryptionError):
        svc.decrypt(envs[1][:-1] + bytes([envs[1][-1] ^ 1]), CTX)
    st = svc.stats()
    assert isinstance(st, ServiceStats)
    enc = st.operations["encrypt"]["pii"]
    assert (enc.count, enc.bytes) == (3, 60)
    assert st.operation_total("decrypt") == 1 and st.operation_total("nothing") == 0
    assert st.failures == {("decrypt", "DecryptionError"): 1}
    assert isinstance(st.encrypt_cache, CacheCounters) and st.encrypt_cache.size == 1
    assert st.encrypt_cache.misses >= 1 and st.encrypt_cache.hits >= 2
    assert st.decrypt_cache.size >= 1
    assert 0.0 < st.max_budget_used < 1.0 and st.oldest_dek_age_seconds >= 0.0
    assert set(st.latency) == {"encrypt", "decrypt"}
    hist = st.latency["encrypt"]
    assert hist.sample_rate >= 1 and list(hist.bounds) == sorted(hist.bounds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.max_budget_used = 0.0  # type: ignore[misc]
    # Reading statistics never reaches the provider.
    before = (provider.decrypt_calls, provider.generate_calls)
    svc.stats()
    assert (provider.decrypt_calls, provider.generate_calls) == before


def test_health_and_rotation_facts_come_from_service_methods(tmp_path: Path) -> None:
    svc, _ = make(tmp_path, keyring_refresh_seconds=0)
    assert svc.provider_name == "local"
    assert svc.provider_health().ok and svc.key_store_health()
    # The local provider keeps no KMS rotation record: the keyring is the history.
    assert svc.rotation_status(svc.versions()[0].wrapping_key_id) is None
    svc.store.close()
    svc.store.db.connect = lambda: (_ for _ in ()).throw(sqlite3.OperationalError("gone"))
    assert svc.key_store_health() is False


def test_system_keys_unwrap_only_under_this_provider(tmp_path: Path) -> None:
    from greenlang_crypto.audit import AUDIT_CONTEXT
    from greenlang_crypto.hazmat import export_key_bytes

    svc, _ = make(tmp_path, keyring_refresh_seconds=0)
    made = svc.generate_system_key(AUDIT_CONTEXT)
    key = svc.unwrap_system_key("local", made.key_id, made.wrapped, AUDIT_CONTEXT)
    assert export_key_bytes(key) == export_key_bytes(made.key)
    with pytest.raises(DecryptionError):
        svc.unwrap_system_key("aws-kms", made.key_id, made.wrapped, AUDIT_CONTEXT)
    with pytest.raises(DecryptionError):
        svc.unwrap_system_key("local", made.key_id, made.wrapped, CTX)


_FRONT_DOORS = (
    "api",
    "cli",
    "compliance",
    "sqlalchemy",
    "redis.py",
    "s3.py",
    "audit",
    "metrics.py",
)


def test_front_doors_and_observers_never_reach_into_the_service() -> None:
    # Front doors call only the service; observers are given what they read. No module of
    # theirs touches a service's provider or key store attributes.
    import ast

    import greenlang_crypto

    root = Path(greenlang_crypto.__file__).parent
    offenders: list[str] = []
    for name in _FRONT_DOORS:
        path = root / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if not file.exists():
                continue
            tree = ast.parse(file.read_text(), str(file))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr in ("provider", "store")
                    and isinstance(node.value, ast.Name | ast.Attribute)
                    and (
                        node.value.id if isinstance(node.value, ast.Name) else node.value.attr
                    ).lstrip("_")
                    in ("service", "svc")
                ):
                    offenders.append(f"{file.relative_to(root)}:{node.lineno}")
    assert offenders == []
