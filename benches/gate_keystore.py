"""Gate checks for the key store's connections and the encrypt path's self-fencing.

- A decrypt whose DEK is not cached reads it from the key store on PostgreSQL (``get_dek``)
  and unwraps it locally. Through the store's bounded pool it may cost at most 1.10x the same
  decrypt on a per-thread connection held for good, the store's design before the pool.
- A warm 64-byte encrypt while the fence is set may cost at most 1.02x the same encrypt with
  the fence lifted.

Both sides of each line alternate in the same rounds, as benches/_measure.paired_ratio does:
call by call for the decrypt, 64 calls at a time for the sub-microsecond encrypt. Imported
by benches/gate.py; the pool line needs ``GLC_PG_URL`` (scripts/services.sh).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benches._measure import WARM_SAMPLES as _WARM_SAMPLES
from benches._measure import Ratio, paired_ratio

Check = Callable[[], Ratio]
Side = tuple[Callable[[], object], Callable[[], object]]

POOL_GOAL = "cache-miss decrypt 64 B: key store pool vs per-thread connection"
FENCE_GOAL = "encrypt 64 B, warm DEK: fence set vs lifted"


def _paired_untimed_setup(
    name: str,
    ours: Side,
    peer: Side,
    target: float,
    rounds: int = 15,
    pairs: int = 200,
    calls: int = 1,
) -> tuple[Ratio, int]:
    """:func:`paired_ratio` for sides given as ``(setup, call)``, the setup untimed.

    Clearing a cache or moving a fence must come before each sample without being charged to
    either side, or it would pull the ratio towards 1. A sub-microsecond call needs ``calls``
    above 1: this machine's clock reads in steps of 10 ns, nearly 2% of a 0.6 us encrypt.
    Returns the ratio and the number of calls each side made (warm-up included), for the
    caller's checks that every call took the path it meant to measure.
    """
    ratio = paired_ratio(
        name,
        ours[1],
        peer[1],
        target,
        rounds,
        pairs,
        ours_setup=ours[0],
        peer_setup=peer[0],
        calls=calls,
    )
    return ratio, (_WARM_SAMPLES + rounds * pairs) * calls


def _per_thread_store(url: str, schema: str) -> Any:
    """A key store whose transactions run on one psycopg connection per thread, held for good:
    the store before the pool, with today's statements.

    Only the database's ``transaction`` differs from the pooled store, so both sides run the
    same ``get_dek`` (its retry wrapper included). The statements name their tables
    unqualified, as the old store's did, and resolve through the connection's
    ``search_path``; the pooled store's cursor qualifies them in each statement instead,
    which is part of what the check measures.
    """
    from greenlang_crypto._db import open_postgres, pg_dsn
    from greenlang_crypto.keys.connection import PG_LOCK, Database
    from greenlang_crypto.keys.store import KeyStore

    dsn = pg_dsn(url)

    class PerThreadDatabase(Database):
        @contextmanager
        def transaction(self, *, serialized: bool = False) -> Iterator[Any]:
            # Database.connection keeps one connection per thread (threading.local), opened
            # by the factory below on the thread's first transaction.
            conn = self.connection()
            cur = conn.cursor()
            try:
                if serialized:
                    cur.execute(f"SELECT pg_advisory_xact_lock({PG_LOCK})")
                yield cur
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                cur.close()

    class PerThreadStore(KeyStore):
        database_type = PerThreadDatabase

    def connect() -> Any:
        return open_postgres(dsn, schema=schema, connect_timeout=10, what="the key store")

    return PerThreadStore(connect, "postgresql", "per-thread connection", schema=schema)


def pool_checks() -> list[Check]:
    """The pooled key store against a per-thread connection, on ``GLC_PG_URL``."""
    from greenlang_crypto import EncryptionContext
    from greenlang_crypto._db import pg_dsn
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.keys.store import open_key_store
    from greenlang_crypto.providers.local import LocalKeyProvider
    from greenlang_crypto.service import EncryptionService

    url = os.environ["GLC_PG_URL"]

    def run() -> Ratio:
        import psycopg

        # A schema of its own: other checks and concurrent runs keep their key stores apart.
        schema = f"gate_ks_{uuid.uuid4().hex[:8]}"
        ctx = EncryptionContext(tenant_id="t1", data_class="pii")
        services: list[EncryptionService] = []
        try:
            with tempfile.TemporaryDirectory(prefix="glc-gate-ks-") as data_dir:
                LocalKeyProvider(data_dir).create_master_key()
                # Refresh off: no background thread runs transactions of its own between the
                # timed calls. Both services share the data directory (the same local master
                # key, a provider of the same type) and the schema (the same keyring and DEK
                # rows); only the store's connection handling differs.
                cfg = EncryptionServiceConfig(data_dir=data_dir, keyring_refresh_seconds=0)
                pooled = EncryptionService(cfg, key_store=open_key_store(url, schema=schema))
                services.append(pooled)
                per_thread = EncryptionService(cfg, key_store=_per_thread_store(url, schema))
                services.append(per_thread)
                envelope = pooled.encrypt(os.urandom(64), ctx)
                pt = per_thread.decrypt(envelope, ctx)
                assert pooled.decrypt(envelope, ctx) == pt

                def side(svc: EncryptionService) -> Side:
                    # Emptied untimed before each call, so each timed decrypt misses the
                    # cache: one key-store read plus a local unwrap.
                    return svc._dec_cache.clear, lambda: svc.decrypt(envelope, ctx)

                hits = [svc._dec_cache.stats()["hits"] for svc in services]
                ratio = _paired_untimed_setup(POOL_GOAL, side(pooled), side(per_thread), 1.10)[0]
                # Every timed call read its DEK from the store: a lookup that found it cached
                # would count a hit.
                assert [svc._dec_cache.stats()["hits"] for svc in services] == hits
                return ratio
        finally:
            for svc in services:
                svc.close()
            with psycopg.connect(pg_dsn(url), autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    return [run]


def fence_checks() -> list[Check]:
    """A warm encrypt with the self-fencing deadline set against the same with it lifted."""
    from greenlang_crypto import EncryptionContext
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.providers.local import LocalKeyProvider
    from greenlang_crypto.service import EncryptionService

    def run() -> Ratio:
        with tempfile.TemporaryDirectory(prefix="glc-gate-fence-") as data_dir:
            LocalKeyProvider(data_dir).create_master_key()
            # A 60 s refresh period makes the fence 121 s long and moves it every 60 s, so no
            # measurement (a few seconds) can reach an expired fence.
            cfg = EncryptionServiceConfig(data_dir=data_dir, keyring_refresh_seconds=60)
            svc = EncryptionService(cfg)
            try:
                return _fence_ratio(svc, EncryptionContext(tenant_id="t1", data_class="pii"))
            finally:
                svc.close()

    return [run]


def _fence_ratio(svc: Any, ctx: Any) -> Ratio:
    """A warm encrypt through ``svc`` with its fence set against the same with it lifted."""
    from greenlang_crypto._core import monotonic_ns

    pt = os.urandom(64)
    svc.encrypt(pt, ctx)
    keyring = svc._keyring
    cache = svc._enc_cache
    deadline = keyring.fence_deadline_ns
    assert deadline is not None and cache.fence_deadline == deadline
    assert deadline - monotonic_ns() > 60e9, "the fence is closer than the run may last"

    # One service and one cache, the fence set before each call of ours and lifted before
    # each of the peer's, untimed. Two services alternating call by call would never seal
    # through the per-thread memo, which remembers one cache's last hit: both sides would
    # take the locked lookup instead of the path a warm encrypt takes, and the fence
    # check, the only difference, would be a smaller share of what is timed. On one cache
    # the memo stays valid (moving the fence does not invalidate it), so the sides differ
    # only in the deadline the fence check compares the clock with: the keyring's (read
    # at each call, the background thread moves it every 60 s) against none.
    #
    # Lifting the fence leaves the check in place (it compares with "never"), so this
    # line shows what a live deadline costs next to none, not what the check itself
    # (one atomic load and a compare per seal) costs next to a build without it.
    def fence() -> None:
        svc._apply_fence(keyring.fence_deadline_ns)

    def lift() -> None:
        svc._apply_fence(None)

    def encrypt() -> None:
        svc.encrypt(pt, ctx)

    # 64 calls a sample: a seal draws its nonces from a per-thread pool that refills every
    # 64 seals (about 0.6 us more for that call), so each sample of either side holds
    # exactly one refill. With 16 calls a sample the refill fell on a fixed side of the
    # alternation, and two identical sides measured 0.95-1.05x.
    hits = cache.stats()["hits"]
    try:
        ratio, calls = _paired_untimed_setup(
            FENCE_GOAL, (fence, encrypt), (lift, encrypt), 1.02, rounds=41, pairs=100, calls=64
        )
    finally:
        fence()
    # Every call sealed on the fast path: a seal stopped by the fence, or a lookup that
    # missed, would not count a hit.
    assert cache.stats()["hits"] - hits == 2 * calls
    assert svc._enc_cache is cache and cache.fence_deadline == keyring.fence_deadline_ns
    return ratio
