"""The PostgreSQL key store's connections under faults, on a private cluster of the test's own.

Each test restarts or stops the server for real (``pg_ctl -m fast``, the way a failover cuts
sessions) or puts PgBouncer in transaction mode in front of it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import KeyStoreUnavailableError
from greenlang_crypto.keys.keyring import _Listener
from greenlang_crypto.keys.store import KeyStore, open_key_store
from greenlang_crypto.service import EncryptionService
from tests.pgcluster import PgCluster, pgbin, pgbouncer, private_cluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    if pgbin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (scripts/setup.sh installs it)")
        pytest.skip("PostgreSQL is not installed")
    with private_cluster() as c:
        yield c


def _store(url: str, **kwargs: object) -> KeyStore:
    store = open_key_store(url, retry_seconds=2.0, **kwargs)  # type: ignore[arg-type]
    if not store.versions():
        store.add_first_version("local", "local:v1")
    return store


def test_reads_recover_after_a_restart_and_close_never_raises(cluster: PgCluster) -> None:
    store = _store(cluster.url)
    epoch = store.epoch()
    cluster.stop()
    started = time.monotonic()
    with pytest.raises(KeyStoreUnavailableError) as info:
        store.epoch()
    # Bounded: the retry budget plus one checkout timeout, not a hang.
    assert time.monotonic() - started < 10
    assert info.value.__cause__ is not None  # the driver's error is chained
    cluster.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert store.epoch() == epoch
            break
        except KeyStoreUnavailableError:
            assert time.monotonic() < deadline, "the store did not reconnect"
            time.sleep(0.1)
    cluster.stop()
    store.close()  # every pooled connection is dead now: closing must still succeed


def test_threads_share_a_bounded_pool(cluster: PgCluster) -> None:
    store = _store(cluster.url, pool_size=3)
    barrier = threading.Barrier(32)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            barrier.wait()
            for _ in range(20):
                store.versions()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.pool_connections() <= 3
    backends = int(
        cluster.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    )
    assert backends <= 3
    store.close()


def test_a_service_closes_quickly_and_cleanly_when_the_server_is_gone(
    cluster: PgCluster, tmp_path: Path
) -> None:
    EncryptionService.init_local(tmp_path).close()
    cfg = EncryptionServiceConfig(
        data_dir=tmp_path, key_store_url=cluster.url, keyring_refresh_seconds=1.0
    )
    svc = EncryptionService(cfg)
    svc.encrypt(b"value", EncryptionContext("acme", "pii"))
    cluster.stop()
    started = time.monotonic()
    svc.close()  # use counts cannot be written: logged, never raised
    # One connection timeout at most, not one per pending write.
    assert time.monotonic() - started < 6


def test_tables_resolve_in_the_store_schema_whatever_the_search_path(cluster: PgCluster) -> None:
    # A decoy table of the same name earlier on the default search path must never be read.
    cluster.psql("CREATE TABLE public.glc_keyring_changes (id int, epoch bigint, changed_at float)")
    cluster.psql("INSERT INTO public.glc_keyring_changes VALUES (1, 999, 0)")
    store = _store(cluster.url)
    assert store.epoch() != 999
    store.close()


def test_listen_is_detected_unavailable_through_a_transaction_pooler(cluster: PgCluster) -> None:
    stop = threading.Event()
    store = _store(cluster.url)
    direct = _Listener(cluster.url, store.notify)
    direct.wait(0.5, stop)
    assert direct.available
    direct.close()
    store.close()
    with pgbouncer(cluster) as bouncer:
        # The probe is sent through the store's own pool, as a key change would be.
        bounced = _store(bouncer.url, transaction_pooler=True)
        pooled = _Listener(bouncer.url, bounced.notify)
        pooled.wait(0.5, stop)
        assert not pooled.available
        pooled.close()
        bounced.close()
        # The store itself works through the pooler in transaction mode: several threads, each
        # past psycopg's prepare threshold (a statement prepared on one server connection
        # does not exist on the next one the pooler hands out).
        for flagged in (True, False):
            _through_the_pooler(bouncer.url, flagged)


def _through_the_pooler(url: str, flagged: bool) -> None:
    # Unflagged, the store finds out from the first prepared statement that vanished, stops
    # preparing and repeats the call: callers never see it.
    store = _store(url, transaction_pooler=flagged)
    assert (store.listen_dsn is None) == flagged
    errors: list[BaseException] = []
    versions, epoch = store.versions(), store.epoch()

    def read() -> None:
        # Two statements of different shapes, many times over from several threads: a
        # statement prepared under one name on one server connection and executed on another
        # would read the other statement's rows (an error here, or a wrong value).
        try:
            for _ in range(60):
                assert store.versions() == versions
                assert store.epoch() == epoch
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store.close()
