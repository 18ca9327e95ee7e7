"""Branch keys on the embedded local provider: format, derivation, scopes, isolation,
crypto-shredding, rotation, budgets, rewrap and retirement, and the Redis key cache's
degradation when Redis is unreachable."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto import _core as core
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import (
    ConfigurationError,
    DataErasedError,
    DecryptionError,
    InvalidArgumentError,
    InvalidEnvelopeError,
    KeyNotFoundError,
    KeyStateError,
)
from greenlang_crypto.keys.branch import BranchKeyRecord, branch_key_context, scope_mapper
from greenlang_crypto.providers.base import GeneratedDataKey, KeyLimits
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.redis_cache import RedisKeyCache
from greenlang_crypto.service import EncryptionService

GOLDEN = Path(__file__).parents[2] / "vectors" / "golden_branch_v1.json"
A = EncryptionContext(tenant_id="tenant-a", data_class="pii")
#: A port nothing listens on: a Redis outage (connections refused at once).
DEAD_REDIS = "redis://127.0.0.1:1/0"
B = EncryptionContext(tenant_id="tenant-b", data_class="pii")


class CountingProvider(LocalKeyProvider):
    """The real local provider, counting calls and recording the contexts it was given."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.generated: list[EncryptionContext] = []
        self.unwrapped: list[EncryptionContext] = []
        self._lock = threading.Lock()

    def generate_data_key(
        self, key_id: str, context: EncryptionContext, limits: KeyLimits
    ) -> GeneratedDataKey:
        with self._lock:
            self.generated.append(context)
        return super().generate_data_key(key_id, context, limits)

    def decrypt_data_key(
        self, key_id: str, wrapped: bytes, context: EncryptionContext, limits: KeyLimits
    ) -> core.DataKey:
        with self._lock:
            self.unwrapped.append(context)
        return super().decrypt_data_key(key_id, wrapped, context, limits)


def _service(
    data_dir: Path,
    *,
    scope: Any = None,
    provider: CountingProvider | None = None,
    key_cache: RedisKeyCache | None = None,
    **config: Any,
) -> EncryptionService:
    options: dict[str, Any] = {
        "data_dir": data_dir,
        "key_reference": "branch",
        "keyring_refresh_seconds": 0,
        **config,
    }
    cfg = EncryptionServiceConfig(**options)
    prov = provider or CountingProvider(data_dir)
    if not prov.versions():
        prov.create_master_key()
    return EncryptionService(cfg, provider=prov, branch_scope=scope, key_cache=key_cache)


@pytest.fixture
def svc(tmp_path: Path) -> Any:
    s = _service(tmp_path)
    yield s
    s.close()


# -- format ------------------------------------------------------------------------------


def test_golden_branch_envelopes_decrypt_forever() -> None:
    data = json.loads(GOLDEN.read_text())
    assert data["format_version"] == 1 and data["key_reference_kind"] == core.KIND_BRANCH
    for case in data["cases"]:
        branch_key = core.DataKey.from_bytes(bytes.fromhex(case["branch_key"]))
        ctx = core.canonical_context(case["context"])
        env = bytes.fromhex(case["envelope"])
        aad = bytes.fromhex(case["associated_data"])
        header = core.parse_envelope(env)
        assert (header.kind, header.branch_id, header.key_version) == (
            "branch",
            case["branch_id"],
            case["key_version"],
        )
        dek = core.branch_data_key(branch_key, env, ctx)
        assert core.open_envelope(dek, env, ctx, aad) == bytes.fromhex(case["plaintext"])


def test_derivation_matches_an_independent_hkdf_and_aes_gcm() -> None:
    # The specification in docs/FORMAT.md, computed with `cryptography` instead of our core.
    data = json.loads(GOLDEN.read_text())
    for case in data["cases"]:
        env = bytes.fromhex(case["envelope"])
        ctx = core.canonical_context(case["context"])
        header_len = core.parse_envelope(env).header_len
        salt = env[12:20]
        info = b"greenlang-crypto/v1/branch-dek" + case["branch_id"].to_bytes(4, "big") + ctx
        dek = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(
            bytes.fromhex(case["branch_key"])
        )
        aad_extra = bytes.fromhex(case["associated_data"])
        aad = (
            env[:header_len]
            + len(ctx).to_bytes(4, "big")
            + ctx
            + len(aad_extra).to_bytes(4, "big")
            + aad_extra
        )
        nonce = env[header_len : header_len + 12]
        plaintext = AESGCM(dek).decrypt(nonce, env[header_len + 12 :], aad)
        assert plaintext == bytes.fromhex(case["plaintext"]), case["name"]


def test_header_fields_and_compact_size() -> None:
    key = core.DataKey.generate()
    ctx = A.canonical
    sealer = core.branch_sealer(key, branch_id=77, key_version=5, context=ctx)
    env = sealer.seal(b"0123456789abcdef")
    # 8 fixed + 4 branch id + 8 salt + 32 commitment + 12 nonce + 16 ciphertext + 16 tag.
    assert len(env) == 96
    h = core.parse_envelope(env)
    assert (h.kind, h.branch_id, h.key_version, h.dek_id, h.provider) == (
        "branch",
        77,
        5,
        None,
        None,
    )
    assert h.has_commitment and h.context_digest is None and h.version == 2
    v1 = core.branch_sealer(key, branch_id=77, key_version=5, context=ctx, format_version=1)
    h1 = core.parse_envelope(v1.seal(b"0123456789abcdef"))
    assert (h1.version, h1.has_commitment, h1.plaintext_len) == (1, False, 16)
    # The decryption-cache id covers the context (the derived DEK depends on it).
    assert core.dek_cache_id(env, ctx) != core.dek_cache_id(env, B.canonical)
    assert core.dek_cache_id(env, ctx).startswith(
        bytes([core.KIND_BRANCH]) + (77).to_bytes(4, "big")
    )
    assert h.key_ref_id == core.dek_cache_id(env, ctx)[: len(h.key_ref_id)]
    # For other kinds the id is the header's key reference id.
    stored = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=9).seal(b"x")
    assert core.dek_cache_id(stored, ctx) == core.parse_envelope(stored).key_ref_id


def test_every_truncation_and_bit_flip_is_a_typed_rejection() -> None:
    key = core.DataKey.generate()
    ctx = A.canonical
    env = core.branch_sealer(key, branch_id=3, key_version=1, context=ctx).seal(b"pii", b"row")

    def open_(data: bytes) -> bytes:
        return core.open_envelope(core.branch_data_key(key, data, ctx), data, ctx, b"row")

    assert open_(env) == b"pii"
    for n in range(len(env)):
        with pytest.raises(DecryptionError):  # InvalidEnvelopeError is a DecryptionError
            open_(env[:n])
    for bit in range(len(env) * 8):
        bad = bytearray(env)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((DecryptionError, InvalidArgumentError)):
            open_(bytes(bad))


def test_branch_data_key_refuses_other_kinds_and_garbage() -> None:
    key = core.DataKey.generate()
    stored = core.EnvelopeSealer(key, key_version=1, context=A.canonical, dek_id=1).seal(b"x")
    with pytest.raises(InvalidArgumentError):
        core.branch_data_key(key, stored, A.canonical)
    with pytest.raises(InvalidEnvelopeError):
        core.branch_data_key(key, b"\xfa\x01\x01\x03\x00", A.canonical)
    with pytest.raises(Exception) as info:
        core.branch_sealer(key, branch_id=1, key_version=1, context=b"\x00")
    assert type(info.value).__name__ == "InvalidContextError"


def test_derivations_are_counted_in_rust() -> None:
    before = core.branch_stats()["derivations"]
    key = core.DataKey.generate()
    core.branch_sealer(key, branch_id=1, key_version=1, context=A.canonical)
    assert core.branch_stats()["derivations"] == before + 1


# -- service: scopes, KMS economy, isolation -------------------------------------------


def test_one_tenant_scope_per_tenant_and_the_kms_context_names_it(tmp_path: Path) -> None:
    prov = CountingProvider(tmp_path)
    svc = _service(tmp_path, provider=prov)
    envs = {
        t: [svc.encrypt(b"v%d" % i, EncryptionContext(t, "pii")) for i in range(5)] for t in "xyz"
    }
    assert len(prov.generated) == 3  # one branch key per tenant, not per message
    scopes = sorted(c.extra["branch_scope"] for c in prov.generated)
    assert scopes == ["tenant:x", "tenant:y", "tenant:z"]
    assert all(c.data_class == "branch-key" and "branch_id" in c.extra for c in prov.generated)
    for t, items in envs.items():
        for i, env in enumerate(items):
            assert svc.decrypt(env, EncryptionContext(t, "pii")) == b"v%d" % i
    assert prov.unwrapped == []  # the creating process never unwraps its own keys
    assert svc.branch_scope(A) == "tenant:tenant-a"
    svc.close()


def test_service_scope_one_branch_key_for_everyone(tmp_path: Path) -> None:
    prov = CountingProvider(tmp_path)
    svc = _service(tmp_path, provider=prov, branch_key_scope="service")
    envs = [svc.encrypt(b"x", EncryptionContext(f"t{i}", "pii")) for i in range(200)]
    assert len(prov.generated) == 1
    cold_prov = CountingProvider(tmp_path)
    cold = _service(tmp_path, provider=cold_prov, branch_key_scope="service")
    assert all(
        cold.decrypt(e, EncryptionContext(f"t{i}", "pii")) == b"x" for i, e in enumerate(envs)
    )
    assert len(cold_prov.unwrapped) == 1 and cold_prov.generated == []
    stats = cold.branch_key_stats()
    assert stats["unwraps"] == 1 and stats["cached_keys"] == 1
    # A tenant's envelope never opens under another tenant's context, even with one key.
    with pytest.raises(DecryptionError):
        cold.decrypt(envs[0], EncryptionContext("t1", "pii"))
    svc.close()
    cold.close()


def test_callable_scope_mapping(tmp_path: Path) -> None:
    prov = CountingProvider(tmp_path)
    svc = _service(tmp_path, provider=prov, scope=lambda ctx: "region:" + ctx.extra["region"])
    for region in ("eu", "us", "eu"):
        ctx = EncryptionContext("t", "pii", extra={"region": region})
        assert svc.decrypt(svc.encrypt(b"v", ctx), ctx) == b"v"
    assert sorted(c.extra["branch_scope"] for c in prov.generated) == ["region:eu", "region:us"]
    bad = _service(tmp_path, scope=lambda ctx: "")
    with pytest.raises(ConfigurationError):
        bad.encrypt(b"v", A)
    svc.close()
    bad.close()


def test_scope_policies_are_validated() -> None:
    assert scope_mapper("service")(A) == "service"
    assert scope_mapper("tenant")(A) == "tenant:tenant-a"
    with pytest.raises(ConfigurationError):
        scope_mapper("per-row")
    with pytest.raises(ConfigurationError):
        EncryptionServiceConfig(branch_key_scope="per-row")
    with pytest.raises(ConfigurationError):
        EncryptionServiceConfig(key_cache_url="http://redis")
    assert EncryptionServiceConfig.from_mapping({"key_reference": "branch"}).key_reference == (
        "branch"
    )


def test_tenant_isolation_and_crypto_shredding(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    env_a = svc.encrypt(b"alice", A)
    env_b = svc.encrypt(b"bob", B)
    # A's envelope under B's context (and B's branch key): refused, opaquely.
    with pytest.raises(DecryptionError):
        svc.decrypt(env_a, B)
    other = _service(tmp_path)  # a second instance on the same key store
    assert other.decrypt(env_a, A) == b"alice"
    assert svc.delete_branch_keys("tenant:tenant-a") == 1
    # Erased, and typed as such (a DecryptionError like every unreadable value).
    with pytest.raises(DataErasedError):
        svc.decrypt(env_a, A)
    assert svc.decrypt(env_b, B) == b"bob"
    # The other instance drops A's keys and derived DEKs once it loads the change.
    other.refresh_keyring()
    with pytest.raises(DataErasedError):
        other.decrypt(env_a, A)
    assert other.decrypt(env_b, B) == b"bob"
    # New data for the tenant gets a new branch key; the old data stays unreadable.
    fresh = svc.encrypt(b"alice-2", A)
    assert parse_envelope(fresh).branch_id != parse_envelope(env_a).branch_id
    assert other.decrypt(fresh, A) == b"alice-2"
    with pytest.raises(DataErasedError):
        other.decrypt(env_a, A)
    svc.close()
    other.close()


def test_an_unknown_branch_reference_is_opaque_and_names_no_id(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    env = bytearray(svc.encrypt(b"alice", A))
    header = parse_envelope(bytes(env))
    assert header.branch_id is not None
    # Point the envelope at a branch id that does not exist, in a scope never erased.
    raw_id = header.branch_id.to_bytes(4, "big")
    at = bytes(env).index(raw_id)
    forged_id = (header.branch_id ^ 0x5A5A5A5A) & 0xFFFFFFFF
    env[at : at + 4] = forged_id.to_bytes(4, "big")
    with pytest.raises(KeyNotFoundError) as info:
        svc.decrypt(bytes(env), A)
    assert not isinstance(info.value, DataErasedError)
    assert isinstance(info.value, DecryptionError)
    assert str(info.value) == str(DecryptionError())
    assert str(forged_id) not in str(info.value) and str(header.branch_id) not in str(info.value)
    svc.close()


def test_a_tenant_key_never_serves_another_tenant(tmp_path: Path) -> None:
    # Even a shared-scope instance refuses to open tenant A's branch envelope for tenant B
    # before any unwrap, so B's request never makes KMS unwrap A's key.
    prov = CountingProvider(tmp_path)
    writer = _service(tmp_path)
    env_a = writer.encrypt(b"alice", A)
    reader = _service(tmp_path, provider=prov, branch_key_scope="service")
    with pytest.raises(DecryptionError):
        reader.decrypt(env_a, B)
    assert prov.unwrapped == []
    writer.close()
    reader.close()


def test_rotation_reaches_another_instance_and_old_data_still_decrypts(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    other = _service(tmp_path)
    old = other.encrypt(b"old", A)
    old_id = parse_envelope(old).branch_id
    new_id = svc.rotate_branch_key("tenant:tenant-a")
    assert new_id != old_id
    assert parse_envelope(svc.encrypt(b"n", A)).branch_id == new_id
    # Before it loads the change the other instance may still use the old key ...
    other.refresh_keyring()
    # ... afterwards every new envelope names the new key, and old ones still decrypt.
    assert parse_envelope(other.encrypt(b"n2", A)).branch_id == new_id
    assert other.decrypt(old, A) == b"old" and svc.decrypt(old, A) == b"old"
    # Other tenants keep their key.
    env_b = other.encrypt(b"b", B)
    assert parse_envelope(env_b).branch_id not in (old_id, new_id)
    svc.close()
    other.close()


def test_derived_deks_keep_message_budgets(tmp_path: Path) -> None:
    svc = _service(tmp_path, max_messages_per_dek=3)
    envs = [svc.encrypt(b"v", A) for _ in range(10)]
    salts = [e[12:20] for e in envs]
    # A new salt (a new derived DEK) every three messages, all under one branch key.
    assert len(set(salts)) == 4
    assert [salts.count(s) for s in dict.fromkeys(salts)] == [3, 3, 3, 1]
    assert len({parse_envelope(e).branch_id for e in envs}) == 1
    assert all(svc.decrypt(e, A) == b"v" for e in envs)
    batch = svc.encrypt_batch([b"1", b"2", b"3"], A)
    assert [svc.decrypt(e, A) for e in batch] == [b"1", b"2", b"3"]
    svc.close()


def test_concurrent_first_use_creates_one_branch_key(tmp_path: Path) -> None:
    prov = CountingProvider(tmp_path)
    svc = _service(tmp_path, provider=prov)
    contexts = [EncryptionContext("shared", "pii", extra={"n": str(i)}) for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        envs = list(pool.map(lambda c: svc.encrypt(b"v", c), contexts))
    assert len(prov.generated) == 1
    assert len({parse_envelope(e).branch_id for e in envs}) == 1
    svc.close()


def test_rewrap_and_retirement_cover_branch_keys(tmp_path: Path) -> None:
    prov = CountingProvider(tmp_path)
    svc = _service(tmp_path, provider=prov)
    env = svc.encrypt(b"v1", A)
    new_master = prov.create_master_key()
    assert svc.rewrap(new_master) >= 1
    cold_prov = CountingProvider(tmp_path)
    cold = _service(tmp_path, provider=cold_prov)
    assert cold.decrypt(env, A) == b"v1"
    assert cold_prov.unwrapped[0] == branch_key_context(
        "tenant:tenant-a", parse_envelope(env).branch_id
    )
    svc.rotate()
    env2 = svc.encrypt(b"v2", A)
    assert parse_envelope(env2).key_version == 2
    with pytest.raises(KeyStateError):
        svc.retire_versions_below(2, wait_seconds=0)
    svc.retire_versions_below(2, delete_stored_deks=True, wait_seconds=0)
    assert svc.decrypt(env2, A) == b"v2"
    assert svc._branches.rows.count_by_version() == {2: 1}
    svc.close()
    cold.close()


def test_no_key_bytes_in_reprs_or_events(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []

    class Recorder:
        def on_event(self, event: str, fields: Any) -> None:
            events.append((event, dict(fields)))

    svc = _service(tmp_path)
    svc.add_observer(Recorder())
    svc.encrypt(b"secret", A)
    record = svc._branches.rows.current("tenant:tenant-a", 1)
    assert record is not None
    assert record.wrapped.hex() not in repr(record) and "wrapped" not in repr(record)
    assert "branch_key_created" in [e for e, _ in events]
    for _, fields in events:
        assert all(not isinstance(v, bytes) for v in fields.values())
    assert "unwraps" in repr(svc._branches)
    assert BranchKeyRecord.from_json(record.as_json()) == record
    svc.close()


def test_unknown_branch_id_is_reported_as_missing_key(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    key = core.DataKey.generate()
    forged = core.branch_sealer(key, branch_id=123, key_version=1, context=A.canonical).seal(b"x")
    with pytest.raises(KeyNotFoundError):
        svc.decrypt(forged, A)
    # A branch id of a real key with a key version it does not belong to: opaque.
    real = svc.encrypt(b"x", A)
    svc.rotate()
    bid = parse_envelope(real).branch_id
    assert bid is not None
    wrong = core.branch_sealer(key, branch_id=bid, key_version=2, context=A.canonical).seal(b"x")
    with pytest.raises(DecryptionError):
        svc.decrypt(wrong, A)
    svc.close()


# -- the Redis key cache degrades to the key store -------------------------------------


def test_unreachable_redis_never_fails_an_encrypt(tmp_path: Path) -> None:
    cache = RedisKeyCache.from_url(DEAD_REDIS, backoff_seconds=60)
    svc = _service(tmp_path, key_cache=cache)
    envs = [svc.encrypt(b"v", EncryptionContext(f"t{i}", "pii")) for i in range(5)]
    cold = _service(tmp_path, key_cache=cache)
    assert all(
        cold.decrypt(e, EncryptionContext(f"t{i}", "pii")) == b"v" for i, e in enumerate(envs)
    )
    stats = svc.key_cache_stats()
    # One timeout, then the cache steps aside for the backoff period.
    assert stats["error"] == 1 and stats["skipped"] >= 5
    assert "hit" not in stats
    svc.close()
    cold.close()


def test_key_cache_from_url_and_bad_entries() -> None:
    cache = RedisKeyCache.from_url(DEAD_REDIS, ttl_seconds=1)
    assert cache.get("x", 0) is None
    assert cache.stats()["error"] == 1
    assert "RedisKeyCache" in repr(cache)


# -- metrics and audit -------------------------------------------------------------------


def test_branch_metrics_and_audit_records(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from greenlang_crypto.audit import AuditLog, SqliteAuditSink
    from greenlang_crypto.metrics import EncryptionMetrics, register_metrics

    writer = _service(tmp_path)
    envs = [writer.encrypt(b"v", EncryptionContext(f"t{i}", "pii")) for i in range(3)]
    writer.close()
    metrics = EncryptionMetrics()
    audit = AuditLog(SqliteAuditSink(tmp_path / "audit.db"), start_thread=False)
    svc = _service(tmp_path)
    svc.add_observer(metrics)
    svc.add_observer(audit)
    audit.attach(svc)
    registry = CollectorRegistry(auto_describe=False)
    register_metrics(svc, registry=registry, audit=audit, metrics=metrics)
    derived_before = core.branch_stats()["derivations"]
    for i, env in enumerate(envs):
        assert svc.decrypt(env, EncryptionContext(f"t{i}", "pii")) == b"v"
    svc.encrypt(b"w", EncryptionContext("t-new", "pii"))
    text = generate_latest(registry).decode()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("gl_") and " " in line
    }
    assert samples["gl_encryption_branch_key_unwraps_total"] == 3
    assert samples["gl_encryption_branch_key_created_total"] == 1
    assert samples["gl_encryption_branch_keys_cached"] == 4
    assert samples["gl_encryption_branch_key_derivations_total"] >= derived_before + 4
    # With the local provider, branch-key KMS work shows up as provider calls too.
    assert samples['gl_kms_calls_total{operation="Decrypt",status="success"}'] == 3
    assert samples['gl_kms_calls_total{operation="GenerateDataKey",status="success"}'] == 1
    svc.rotate_branch_key("tenant:t0")
    svc.delete_branch_keys("tenant:t1")
    audit.flush()
    actions = [r.entry.action for r in audit.tail(50)]
    assert "branch_key_unwrapped" in actions and "branch_key_created" in actions
    assert "branch_key_rotate" in actions and "branch_key_delete" in actions
    svc.close()
    audit.close()


def test_redis_outcomes_are_exported(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from greenlang_crypto.metrics import register_metrics

    svc = _service(tmp_path, key_cache=RedisKeyCache.from_url(DEAD_REDIS))
    svc.encrypt(b"v", A)
    registry = CollectorRegistry(auto_describe=False)
    register_metrics(svc, registry=registry)
    text = generate_latest(registry).decode()
    assert 'gl_encryption_key_cache_redis_total{outcome="error"} 1.0' in text
    svc.close()


def test_stored_dek_records_round_trip_through_json(tmp_path: Path) -> None:
    from greenlang_crypto.redis_cache import dek_record_from_json, dek_record_to_json

    svc = _service(tmp_path, key_reference="stored")
    env = svc.encrypt(b"v", A)
    dek_id = parse_envelope(env).dek_id
    assert dek_id is not None
    record = svc.store.get_dek(dek_id)
    assert record is not None
    data = dek_record_to_json(record)
    assert dek_record_from_json(json.loads(json.dumps(data))) == record
    assert dek_record_from_json(None) is None
    assert dek_record_from_json({**data, "wrapped": "not hex"}) is None
    assert dek_record_from_json({**data, "context": "x"}) is None
    svc.close()


def test_key_cache_failures_on_write_and_delete_are_contained() -> None:
    cache = RedisKeyCache.from_url(DEAD_REDIS, backoff_seconds=0)
    key = core.DataKey.generate()
    cache.put("a", {"x": 1}, 1, key)
    cache.delete(["a", "b"])
    cache.delete([])
    assert cache.get("a", 0) is None
    assert cache.stats()["error"] == 3
    # In backoff nothing is sent at all.
    waiting = RedisKeyCache.from_url(DEAD_REDIS, backoff_seconds=60)
    assert waiting.get("a", 0) is None
    waiting.put("a", {"x": 1}, 1, key)
    waiting.delete(["a"])
    assert waiting.stats() == {"error": 1, "skipped": 2}


def test_mutated_branch_envelopes_only_raise_typed_errors(tmp_path: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from greenlang_crypto.exceptions import GreenlangCryptoError

    svc = _service(tmp_path)
    env = svc.encrypt(b"secret value", A)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
        st.integers(0, 80),
        st.binary(max_size=16),
    )
    def check(edits: list[tuple[int, int]], cut: int, tail: bytes) -> None:
        data = bytearray(env)
        for pos, value in edits:
            if pos < len(data):
                data[pos] = value
        mutated = bytes(data[: len(data) - cut] if cut < len(data) else b"") + tail
        try:
            out = svc.decrypt(mutated, A)
        except GreenlangCryptoError:
            return
        # Only the untouched envelope may decrypt.
        assert mutated == env and out == b"secret value"

    check()
    svc.close()


def test_records_and_keys_stay_bounded_under_many_scopes(tmp_path: Path) -> None:
    svc = _service(tmp_path, cache_max_entries=2)
    contexts = [EncryptionContext(f"t{i}", "pii") for i in range(50)]
    envs = [svc.encrypt(b"v", c) for c in contexts]
    branches = svc._branches
    assert len(branches._records) <= 8 and len(branches._current) <= 8
    assert branches.stats()["cached_keys"] <= 2
    # Everything still decrypts: records and keys come back from the key store.
    assert all(svc.decrypt(e, c) == b"v" for e, c in zip(envs, contexts, strict=True))
    assert len(branches._records) <= 8
    svc.close()
