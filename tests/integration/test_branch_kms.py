"""Branch keys against real components: KMS (the moto server, over HTTP, calls counted at the
boto3 client), PostgreSQL and Redis.

- 1,000 tenants x 10 encrypts with one shared branch key send one KMS request per process per
  TTL; with a branch key per tenant, exactly one per tenant; a fresh process decrypting
  everything sends the same.
- A tenant's envelope never decrypts under another tenant's context or branch key; deleting
  a tenant's branch key shreds that tenant and nobody else.
- Three processes on one PostgreSQL and Redis follow a branch-key rotation within the
  keyring's propagation bound.
- Cold processes read wrapped branch keys from Redis instead of the database; Redis never
  holds a plaintext or a plaintext key; a Redis outage never fails an encrypt.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto._core import ManualClock
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import DecryptionError
from greenlang_crypto.keys.branch import branch_key_context
from greenlang_crypto.keys.store import open_key_store
from greenlang_crypto.providers.aws_kms import AwsKmsKeyProvider
from greenlang_crypto.redis_cache import RedisKeyCache
from greenlang_crypto.service import EncryptionService
from tests.integration.conftest import CREDENTIALS, kms_client

pytestmark = pytest.mark.integration

PROC = Path(__file__).with_name("branch_proc.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
TENANTS = 1000
PER_TENANT = 10
REFRESH = 0.5
#: The cache TTL of the per-TTL test, on a manual clock (the longest the policy allows).
TTL = 300.0
#: Scheduling slack on top of the refresh bound: four busy Python processes share two cores.
SLACK = 1.5
#: A Redis database of these tests' own (others use 0 and 3), wiped before and after.
REDIS_DB = 11


def _need(what: str, hint: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not available (CI must start it: {hint})")
    pytest.skip(f"{what} is not available; {hint}")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of these tests' own on the shared server, empty before and after."""
    base = os.environ.get("GLC_REDIS_URL")
    if not base:
        _need("Redis (GLC_REDIS_URL)", "scripts/services.sh")
    assert base is not None
    import redis

    url = base.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def kms_arn(kms_endpoint: str) -> str:
    # A key of this test's own: no server reset, other tests share the server.
    return str(kms_client(kms_endpoint).create_key(Description="branch keys")["KeyMetadata"]["Arn"])


def _config(
    store_url: str, endpoint: str, arn: str, data_dir: Path, **overrides: Any
) -> EncryptionServiceConfig:
    options: dict[str, Any] = {
        "provider": "aws-kms",
        "kms_key_ids": (arn,),
        "kms_endpoint_url": endpoint,
        "kms_region": "us-east-1",
        "key_store_url": store_url,
        "key_reference": "branch",
        "data_dir": data_dir,
        "keyring_refresh_seconds": REFRESH,
        **overrides,
    }
    return EncryptionServiceConfig(**options)


def _service(
    config: EncryptionServiceConfig,
    key_cache: RedisKeyCache | None = None,
    clock: ManualClock | None = None,
) -> tuple[EncryptionService, list[tuple[str, dict[str, str]]]]:
    """A service whose KMS requests are recorded as botocore sends them (target, context).

    With ``clock``, the service's caches and keyring read it instead of the system clock.
    """
    provider = AwsKmsKeyProvider(
        keys=config.kms_key_ids,
        region="us-east-1",
        endpoint_url=config.kms_endpoint_url,
        **CREDENTIALS,
    )
    sent: list[tuple[str, dict[str, str]]] = []

    def count(request: Any, **_: Any) -> None:
        body = json.loads(request.body or b"{}")
        target = request.headers.get("X-Amz-Target", b"").decode()
        sent.append((target, body.get("EncryptionContext", {})))

    for client in provider.clients.values():
        client.meta.events.register("before-send.kms", count)
    if clock is None:
        return EncryptionService(config, provider=provider, key_cache=key_cache), sent
    return EncryptionService(config, provider=provider, key_cache=key_cache, clock=clock), sent


def _env(config: EncryptionServiceConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GLC_PROVIDER": config.provider,
            "GLC_KMS_KEY_IDS": ",".join(config.kms_key_ids),
            "GLC_KMS_ENDPOINT_URL": config.kms_endpoint_url or "",
            "GLC_KMS_REGION": "us-east-1",
            "GLC_KEY_STORE_URL": config.resolved_key_store_url,
            "GLC_KEY_REFERENCE": config.key_reference,
            "GLC_BRANCH_KEY_SCOPE": config.branch_key_scope,
            "GLC_KEYRING_REFRESH_SECONDS": str(config.keyring_refresh_seconds),
            "GLC_DATA_DIR": str(config.data_dir),
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    if config.key_cache_url:
        env["GLC_KEY_CACHE_URL"] = config.key_cache_url
    return env


def _encrypt_all(
    svc: EncryptionService, path: Path, tenants: int = TENANTS
) -> list[dict[str, str]]:
    items = []
    for i in range(PER_TENANT):
        for t in range(tenants):
            pt = f"t{t}-m{i}"
            env = svc.encrypt(pt.encode(), EncryptionContext(f"t{t}", "pii"))
            items.append({"tenant": f"t{t}", "env": env.hex(), "pt": pt})
    path.write_text("\n".join(json.dumps(x) for x in items) + "\n")
    return items


def _decrypt_in_fresh_process(config: EncryptionServiceConfig, path: Path) -> dict[str, Any]:
    out = path.with_suffix(".summary.json")
    proc = subprocess.run(
        [sys.executable, str(PROC), "decrypt", str(path), str(out)],
        env=_env(config),
        capture_output=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def test_thousand_tenants_share_one_branch_key_one_kms_call(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str
) -> None:
    config = _config(pg_database, kms_endpoint, kms_arn, tmp_path, branch_key_scope="service")
    svc, sent = _service(config)
    items = _encrypt_all(svc, tmp_path / "envs.jsonl")
    assert len(items) == TENANTS * PER_TENANT
    # One request for 1,000 tenants: the branch key, created once.
    assert [t for t, _ in sent] == ["TrentService.GenerateDataKey"]
    assert (
        sent[0][1] == branch_key_context("service", int(sent[0][1]["branch_id"])).as_dict()
    )  # CloudTrail shows the scope
    assert svc.branch_key_stats()["derivations"] >= TENANTS
    # Every envelope of a 9-byte value is 89 bytes: 8 + 12 reference + 32 commitment + 12 + 9
    # + 16.
    assert {len(bytes.fromhex(x["env"])) - len(x["pt"]) for x in items} == {80}
    svc.close()
    # A fresh process decrypting all 10,000 envelopes: one Decrypt, of the branch key.
    summary = _decrypt_in_fresh_process(config, tmp_path / "envs.jsonl")
    assert summary["ok"] == TENANTS * PER_TENANT and summary["errors"] == {}
    assert summary["sent"] == ["TrentService.Decrypt"]
    assert summary["branch"]["unwraps"] == 1


def test_one_kms_call_per_process_per_ttl(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str
) -> None:
    config = _config(
        pg_database,
        kms_endpoint,
        kms_arn,
        tmp_path,
        branch_key_scope="service",
        cache_ttl_seconds=TTL,
    )
    creator, created = _service(config)
    creator.encrypt(b"x", EncryptionContext("t0", "pii"))
    assert [t for t, _ in created] == ["TrentService.GenerateDataKey"]
    # The service's caches read a manual clock: a TTL window ends when the test says so, not
    # when a slow round happens to cross it.
    clock = ManualClock()
    svc, sent = _service(config, clock=clock)
    # Round 0 opens a window, round 1 ends one second before it closes, round 2 starts the
    # next window: one unwrap per TTL window, however many tenants.
    for rnd, (step, unwraps) in enumerate([(0.0, 1), (TTL - 1.0, 1), (1.0, 2)]):
        clock.advance(step)
        for t in range(100):
            svc.encrypt(b"x", EncryptionContext(f"t{t}-{rnd}", "pii"))
        assert [t for t, _ in sent] == ["TrentService.Decrypt"] * unwraps, f"round {rnd}"
    svc.close()
    creator.close()


def test_a_branch_key_per_tenant_one_kms_call_per_tenant(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str
) -> None:
    config = _config(pg_database, kms_endpoint, kms_arn, tmp_path, branch_key_scope="tenant")
    svc, sent = _service(config)
    _encrypt_all(svc, tmp_path / "envs.jsonl")
    assert [t for t, _ in sent] == ["TrentService.GenerateDataKey"] * TENANTS
    scopes = sorted(ctx["branch_scope"] for _, ctx in sent)
    assert scopes == sorted(f"tenant:t{t}" for t in range(TENANTS))
    svc.close()
    summary = _decrypt_in_fresh_process(config, tmp_path / "envs.jsonl")
    assert summary["ok"] == TENANTS * PER_TENANT and summary["errors"] == {}
    # Exactly one unwrap per tenant, not per envelope.
    assert summary["sent"] == ["TrentService.Decrypt"] * TENANTS
    assert summary["branch"]["unwraps"] == TENANTS


def test_per_context_deks_for_comparison(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str
) -> None:
    # The baseline the README compares against: a stored DEK per context.
    config = _config(pg_database, kms_endpoint, kms_arn, tmp_path, key_reference="stored")
    svc, sent = _service(config)
    _encrypt_all(svc, tmp_path / "envs.jsonl")
    assert [t for t, _ in sent] == ["TrentService.GenerateDataKey"] * TENANTS
    svc.close()
    summary = _decrypt_in_fresh_process(config, tmp_path / "envs.jsonl")
    assert summary["ok"] == TENANTS * PER_TENANT
    assert summary["sent"] == ["TrentService.Decrypt"] * TENANTS


def test_isolation_and_crypto_shredding_over_kms(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str
) -> None:
    config = _config(pg_database, kms_endpoint, kms_arn, tmp_path, branch_key_scope="tenant")
    svc, _ = _service(config)
    path = tmp_path / "envs.jsonl"
    items = _encrypt_all(svc, path, tenants=5)
    env_t0 = bytes.fromhex(items[0]["env"])
    assert items[0]["tenant"] == "t0"
    # Tenant t0's envelope under t1's context: refused (and t0's key is not unwrapped for t1).
    with pytest.raises(DecryptionError):
        svc.decrypt(env_t0, EncryptionContext("t1", "pii"))
    assert svc.delete_branch_keys("tenant:t0") == 1
    # A wrapped branch key copied into another tenant's row does not unwrap at KMS: its
    # EncryptionContext names the scope and the id it was made for.
    store = open_key_store(pg_database)
    with store.db.transaction() as cur:
        cur.execute(
            "UPDATE glc_branch_keys SET wrapped = "
            "(SELECT wrapped FROM glc_branch_keys WHERE scope = 'tenant:t1') "
            "WHERE scope = 'tenant:t2'"
        )
    store.close()
    svc.close()
    summary = _decrypt_in_fresh_process(config, path)
    # t0 is shredded (a typed erasure, not a missing key), t2's key no longer unwraps,
    # everyone else is untouched.
    assert summary["errors"] == {"DataErasedError": PER_TENANT, "DecryptionError": PER_TENANT}
    assert summary["ok"] == 3 * PER_TENANT


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _secret_forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), base64.b64encode(secret)]


def test_cold_processes_read_redis_which_holds_no_secrets(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str, redis_url: str
) -> None:
    import redis

    config = _config(
        pg_database,
        kms_endpoint,
        kms_arn,
        tmp_path,
        branch_key_scope="tenant",
        key_cache_url=redis_url,
    )
    svc, _ = _service(config)
    path = tmp_path / "envs.jsonl"
    items = _encrypt_all(svc, path, tenants=20)
    assert svc.key_cache_stats()["write"] >= 40  # by id and as the scope's current key
    svc.close()
    summary = _decrypt_in_fresh_process(config, path)
    assert summary["ok"] == 20 * PER_TENANT
    # The cold process read every wrapped branch key from Redis, none from PostgreSQL, and
    # still unwrapped each through KMS.
    assert summary["branch"]["store_reads"] == 0
    assert summary["redis"]["hit"] == 20
    assert summary["sent"] == ["TrentService.Decrypt"] * 20
    # The plaintext branch keys, as KMS returns them (to search for them below).
    kms = kms_client(kms_endpoint)
    store = open_key_store(pg_database)
    with store.db.transaction() as cur:
        cur.execute("SELECT branch_id, scope, wrapped FROM glc_branch_keys")
        rows = cur.fetchall()
    store.close()
    assert len(rows) == 20
    secrets = [
        kms.decrypt(
            CiphertextBlob=bytes(wrapped),
            EncryptionContext=branch_key_context(scope, int(bid)).as_dict(),
        )["Plaintext"]
        for bid, scope, wrapped in rows
    ]
    forbidden = [f for s in secrets for f in _secret_forms(s)]
    forbidden += [x["pt"].encode() for x in items]
    client = redis.Redis.from_url(redis_url)
    dumps: list[bytes] = []
    values: list[bytes] = []
    for name in client.scan_iter(count=1000):
        dumps.append(client.dump(name) or b"")
        values.append(client.get(name) or b"")
    client.close()
    # The check can fail: the cache really holds the wrapped keys (as hex) ...
    assert len(dumps) == 40
    blob = b"\n".join(values)
    assert all(bytes(wrapped).hex().encode() in blob for _, _, wrapped in rows)
    # ... and neither the serialized entries nor their values hold a plaintext or a key.
    for data in (*dumps, *values):
        for needle in forbidden:
            assert needle not in data


def test_stored_dek_rows_are_shared_through_redis(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str, redis_url: str
) -> None:
    config = _config(
        pg_database,
        kms_endpoint,
        kms_arn,
        tmp_path,
        key_reference="stored",
        key_cache_url=redis_url,
    )
    svc, _ = _service(config)
    path = tmp_path / "envs.jsonl"
    _encrypt_all(svc, path, tenants=5)
    svc.close()
    first = _decrypt_in_fresh_process(config, path)
    second = _decrypt_in_fresh_process(config, path)
    assert first["ok"] == second["ok"] == 5 * PER_TENANT
    # The first cold process reads the rows from PostgreSQL and shares them; the second one
    # finds all five in Redis. Both still unwrap each DEK at KMS.
    assert (first["redis"]["miss"], first["redis"]["write"]) == (5, 5)
    assert second["redis"]["hit"] == 5 and "miss" not in second["redis"]
    assert first["sent"] == second["sent"] == ["TrentService.Decrypt"] * 5


def test_redis_outage_never_fails_an_encrypt(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str
) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        _need("redis-server", "scripts/setup.sh installs it")
    assert binary is not None
    port = _free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        config = _config(
            pg_database,
            kms_endpoint,
            kms_arn,
            tmp_path,
            branch_key_scope="tenant",
            key_cache_url=url,
        )
        svc, _ = _service(config)
        before = [svc.encrypt(b"a", EncryptionContext(f"t{t}", "pii")) for t in range(10)]
        assert svc.key_cache_stats()["write"] >= 10
        server.kill()
        server.wait(10)
        # Redis is gone: new tenants (cache misses) and a cold instance still work.
        after = [svc.encrypt(b"b", EncryptionContext(f"n{t}", "pii")) for t in range(10)]
        cold, _ = _service(config)
        for t, env in enumerate(before):
            assert cold.decrypt(env, EncryptionContext(f"t{t}", "pii")) == b"a"
        for t, env in enumerate(after):
            assert cold.decrypt(env, EncryptionContext(f"n{t}", "pii")) == b"b"
        assert svc.key_cache_stats()["error"] >= 1
        assert cold.key_cache_stats()["error"] >= 1
        svc.close()
        cold.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def test_fleet_follows_a_branch_key_rotation(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str, redis_url: str
) -> None:
    config = _config(
        pg_database,
        kms_endpoint,
        kms_arn,
        tmp_path,
        branch_key_scope="tenant",
        key_cache_url=redis_url,
    )
    admin, _ = _service(config)
    first = parse_envelope(admin.encrypt(b"x", EncryptionContext("fleet", "pii"))).branch_id
    out = tmp_path / "out"
    out.mkdir()
    env = _env(config)
    names = ["a", "b", "c"]
    procs = []
    for name in names:
        with (out / f"{name}.stderr").open("wb") as err:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(PROC), "worker", name, str(out)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )

    def logs() -> dict[str, list[dict[str, Any]]]:
        result = {}
        for name in names:
            path = out / f"worker-{name}.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            result[name] = [json.loads(line) for line in lines if line.endswith("}")]
        return result

    try:
        deadline = time.monotonic() + 60
        while not all(len(v) >= 10 for v in logs().values()):
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
        rotated_at = time.time()
        second = admin.rotate_branch_key("tenant:fleet")
        time.sleep(REFRESH + SLACK + 1.0)
        # Every worker has reported the rotation's epoch in its heartbeat.
        workers = [i for i in admin.live_instances() if i.instance_id != admin.instance_id]
        assert len(workers) == 3
        assert {i.epoch for i in workers} == {admin.keyring_epoch}
    finally:
        (out / "stop").touch()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    for name, proc in zip(names, procs, strict=True):
        assert proc.returncode == 0, (out / f"{name}.stderr").read_text()
    lags = []
    for name, records in logs().items():
        assert not [r for r in records if "err" in r], name
        assert {r["branch_id"] for r in records if r["t"] < rotated_at} == {first}, name
        late = [r for r in records if r["t"] > rotated_at + REFRESH + SLACK]
        assert late and all(r["branch_id"] == second for r in late), name
        old_after = [
            r["t"] - rotated_at for r in records if r["t"] > rotated_at and r["branch_id"] == first
        ]
        lags.append(max(old_after, default=0.0))
        # Old envelopes still decrypt after the rotation.
        old_env = bytes.fromhex(records[0]["env"])
        assert admin.decrypt(old_env, EncryptionContext("fleet", "pii")).startswith(name.encode())
    # LISTEN/NOTIFY on PostgreSQL: in practice well inside the polling bound.
    assert max(lags) < REFRESH + SLACK
    stats = [json.loads((out / f"worker-{n}.stats.json").read_text()) for n in names]
    # The workers started cold and found the scope's wrapped key in Redis.
    assert sum(s["redis"].get("hit", 0) for s in stats) >= 3
    admin.close()


def test_damaged_stale_and_foreign_redis_entries_fall_back_to_the_key_store(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str, redis_url: str
) -> None:
    import redis

    cache = RedisKeyCache.from_url(redis_url)
    config = _config(pg_database, kms_endpoint, kms_arn, tmp_path, branch_key_scope="tenant")
    writer, _ = _service(config, key_cache=cache)
    env = writer.encrypt(b"v", EncryptionContext("t0", "pii"))
    branch_id = parse_envelope(env).branch_id
    writer.close()
    client = redis.Redis.from_url(redis_url)
    name = f"glc:keys:branch:id:{branch_id}"
    good = json.loads(client.get(name) or b"{}")
    assert good["record"]["branch_id"] == branch_id
    for damaged in (
        b"not json",
        json.dumps({"epoch": good["epoch"], "record": "x"}).encode(),
        json.dumps({"epoch": good["epoch"], "record": {"branch_id": branch_id}}).encode(),
        json.dumps({"epoch": good["epoch"] - 1, "record": good["record"]}).encode(),
    ):
        client.set(name, damaged)
        reader, _ = _service(config, key_cache=RedisKeyCache.from_url(redis_url))
        assert reader.decrypt(env, EncryptionContext("t0", "pii")) == b"v"
        # Whatever Redis held, the reader took the row from PostgreSQL (and shared it again).
        assert reader.branch_key_stats()["store_reads"] == 1
        assert reader.key_cache_stats()["write"] >= 1
        reader.close()
    client.close()


# -- a Redis writer is an attacker: the shared cache authenticates its entries -------------------


def _entries(client: Any) -> dict[bytes, dict[str, Any]]:
    return {name: json.loads(client.get(name) or b"{}") for name in client.scan_iter("glc:keys:*")}


def _plant(client: Any, name: bytes | str, entry: dict[str, Any]) -> None:
    client.set(name, json.dumps(entry).encode())


@pytest.fixture
def config(
    tmp_path: Path, pg_database: str, kms_endpoint: str, kms_arn: str, redis_url: str
) -> EncryptionServiceConfig:
    """Per-tenant branch keys, shared through the Redis key cache."""
    return _config(
        pg_database,
        kms_endpoint,
        kms_arn,
        tmp_path,
        branch_key_scope="tenant",
        key_cache_url=redis_url,
    )


def _store_epoch(url: str) -> int:
    store = open_key_store(url)
    try:
        return store.epoch()
    finally:
        store.close()


def test_redis_cannot_unshred_an_erased_tenant_by_replaying_or_restamping_its_entries(
    config: EncryptionServiceConfig, pg_database: str, redis_url: str
) -> None:
    import redis

    from greenlang_crypto.exceptions import DataErasedError

    admin, _ = _service(config)
    acme = EncryptionContext("acme", "pii")
    env = admin.encrypt(b"alice@example.com", acme)
    old_id = parse_envelope(env).branch_id
    client = redis.Redis.from_url(redis_url)
    saved = _entries(client)
    assert {e["record"]["branch_id"] for e in saved.values()} == {old_id}
    assert admin.delete_branch_keys("tenant:acme") == 1
    epoch_now = _store_epoch(pg_database)
    # The attacker puts the deleted key's entries back: once re-stamped far ahead (the key
    # store does not confirm that epoch), once at exactly the store's epoch (the MAC, which
    # covers the epoch, fails), and once as they were (stale).
    for restamp, refused_as in (
        (epoch_now + 100, "unconfirmed"),
        (epoch_now, "forged"),
        (None, "stale"),
    ):
        for name, entry in saved.items():
            _plant(client, name, entry if restamp is None else {**entry, "epoch": restamp})
        fresh, _ = _service(config)
        with pytest.raises(DataErasedError):
            fresh.decrypt(env, acme)
        with pytest.raises(DataErasedError):
            admin.decrypt(env, acme)
        # New writes for the tenant go under a new key, never the erased one.
        assert parse_envelope(fresh.encrypt(b"new", acme)).branch_id != old_id
        stats = fresh.key_cache_stats()
        assert stats.get(refused_as, 0) >= 1 and stats.get("hit", 0) == stats.get("forged", 0)
        fresh.close()
    admin.close()
    client.close()


def test_a_record_rebuilt_from_a_backup_or_planted_across_scopes_is_refused(
    config: EncryptionServiceConfig, pg_database: str, redis_url: str
) -> None:
    import redis

    writer, _ = _service(config)
    a, b = EncryptionContext("tenant-a", "pii"), EncryptionContext("tenant-b", "pii")
    id_a = parse_envelope(writer.encrypt(b"a", a)).branch_id
    id_b = parse_envelope(writer.encrypt(b"b", b)).branch_id
    writer.close()
    client = redis.Redis.from_url(redis_url)
    entries = _entries(client)
    name_a = next(n for n in entries if n.endswith(b":tenant:tenant-a"))
    name_b = next(n for n in entries if n.endswith(b":tenant:tenant-b"))
    # B's current entry in A's slot: A's new data must not be sealed under B's key.
    _plant(client, name_a, entries[name_b])
    reader, _ = _service(config)
    assert parse_envelope(reader.encrypt(b"a2", a)).branch_id == id_a
    assert reader.key_cache_stats()["forged"] >= 1
    reader.close()
    # A's own record, rebuilt from a copy of the key store (no key, so no valid MAC), at the
    # current epoch.
    rebuilt = {**entries[name_a], "tag": "00" * 32}
    _plant(client, name_a, rebuilt)
    reader, _ = _service(config)
    assert parse_envelope(reader.encrypt(b"a3", a)).branch_id == id_a
    assert reader.key_cache_stats()["forged"] >= 1
    # ... and the refused entries were replaced by genuine ones, which a later reader uses.
    reader.close()
    cold, _ = _service(config)
    assert parse_envelope(cold.encrypt(b"a4", a)).branch_id == id_a
    assert parse_envelope(cold.encrypt(b"b4", b)).branch_id == id_b
    assert cold.key_cache_stats().get("forged", 0) == 0
    cold.close()
    client.close()


def test_replaying_the_old_current_entry_after_a_rotation_keeps_nothing_on_the_old_key(
    config: EncryptionServiceConfig, pg_database: str, redis_url: str
) -> None:
    import redis

    admin, _ = _service(config)
    ctx = EncryptionContext("globex", "pii")
    old_id = parse_envelope(admin.encrypt(b"v", ctx)).branch_id
    client = redis.Redis.from_url(redis_url)
    current = next(n for n in _entries(client) if n.startswith(b"glc:keys:branch:current:"))
    old_entry = _entries(client)[current]
    new_id = admin.rotate_branch_key("tenant:globex")
    assert new_id != old_id
    epoch_now = _store_epoch(pg_database)
    for replay in (old_entry, {**old_entry, "epoch": epoch_now}):
        _plant(client, current, replay)
        fresh, _ = _service(config)
        assert parse_envelope(fresh.encrypt(b"w", ctx)).branch_id == new_id
        fresh.close()
    admin.close()
    client.close()
