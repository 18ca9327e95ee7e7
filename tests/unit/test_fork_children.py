"""A service created before ``os.fork()`` keeps working in the child as another instance.

Servers that load the app and then fork workers (gunicorn ``--preload``, Celery's prefork
pool) run every worker on objects made in the parent. The child must see key changes made
elsewhere, register as an instance of its own (retirement checks count it), use its own key
store and audit connections, and write its own audit records but not the parent's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.audit import AuditLog
from greenlang_crypto.audit.sinks import SqliteAuditSink
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.service import EncryptionService
from tests._forking import fork

CTX = EncryptionContext("acme", "pii")

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    EncryptionService.init_local(tmp_path).close()
    return tmp_path


def service(data: Path, refresh: float = 0.2) -> EncryptionService:
    return EncryptionService(
        EncryptionServiceConfig(data_dir=data, keyring_refresh_seconds=refresh)
    )


def wait_for(check: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (got := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return got


def test_a_forked_child_sees_rotations_and_registers_as_an_instance(data: Path) -> None:
    svc = service(data)
    svc.encrypt(b"before the fork", CTX)

    def child() -> dict[str, Any]:
        version = wait_for(lambda: svc.primary_version == 2 and 2)
        env = svc.encrypt(b"in the child", CTX)
        return {
            "pid": os.getpid(),
            "instance": svc._keyring.instance_id,
            "version": version,
            "round_trip": svc.decrypt(env, CTX) == b"in the child",
        }

    result = fork(child)
    admin = service(data, refresh=0)
    try:
        # The child's own refresh thread registers it before any change happens.
        me = os.getpid()
        live = wait_for(lambda: [i for i in admin._keyring.live_instances() if i.pid != me])
        admin.rotate()
        out = result()
        assert out["version"] == 2 and out["round_trip"]
        assert out["pid"] in {i.pid for i in live}
        assert out["instance"] != svc._keyring.instance_id
        # The parent goes on as before, on its own connections.
        wait_for(lambda: svc.primary_version == 2)
        assert svc.decrypt(svc.encrypt(b"parent", CTX), CTX) == b"parent"
    finally:
        admin.close()
        svc.close()


def test_a_forked_child_opens_its_own_key_store_connection(data: Path) -> None:
    svc = service(data, refresh=0)
    store = svc._keyring._store
    parents = store.db.connection()

    def child() -> bool:
        mine = store.db.connection()
        env = svc.encrypt(b"x", CTX)
        return mine is not parents and svc.decrypt(env, CTX) == b"x"

    assert fork(child)() is True
    assert store.db.connection() is parents
    svc.close()


def test_a_forked_child_writes_its_own_audit_records_not_the_parents(data: Path) -> None:
    audit = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False)
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=data, keyring_refresh_seconds=0), observers=[audit]
    )
    audit.attach(svc)
    # Buffered in the parent at the moment of the fork: the parent's to write, once.
    audit.on_event("key_rotated", {"old_version": 1, "new_version": 2})

    def child() -> int:
        audit.record("child_action", actor="child")
        audit.flush()
        return len(audit.tail(1000))

    child_saw = fork(child)()
    audit.flush()
    records = audit.tail(1000)
    actions = [r.entry.action for r in records]
    assert actions.count("key_rotated") == 1 and actions.count("child_action") == 1
    # The child wrote only its own record: the parent's buffer was not flushed there.
    assert child_saw == len(records) - 1
    assert audit.verify().ok
    audit.close()
    svc.close()


def test_a_forked_child_runs_its_own_audit_flusher(data: Path) -> None:
    audit = AuditLog(SqliteAuditSink(data / "audit.db"), flush_interval=0.05)
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=data, keyring_refresh_seconds=0), observers=[audit]
    )
    audit.attach(svc)

    def child() -> bool:
        audit.on_event("key_rotated", {"old_version": 7, "new_version": 8})
        # Written by the child's flusher thread; nothing calls flush here.
        return bool(
            wait_for(lambda: any(r.entry.action == "key_rotated" for r in audit.tail(100)), 10)
        )

    assert fork(child)() is True
    audit.close()
    svc.close()


def test_a_forked_child_never_waits_on_a_lock_a_parent_thread_held(data: Path) -> None:
    # A parent thread inside a key-provider call holds a DEK flight lock; the child, which
    # does not have that thread, must still fetch DEKs.
    svc = service(data, refresh=0)
    held = list(svc._flights)
    for lock in held:
        lock.acquire()
    try:

        def child() -> bool:
            return svc.decrypt(svc.encrypt(b"fresh context", CTX), CTX) == b"fresh context"

        assert fork(child)() is True
    finally:
        for lock in held:
            lock.release()
    svc.close()


def _lock_cases() -> list[tuple[str, Callable[[], tuple[Any, str, Callable[[], Any]]]]]:
    """Objects that hold nothing per process but a lock: (owner, lock attribute, a call that
    takes the lock and returns something checkable)."""

    def progress() -> tuple[Any, str, Callable[[], Any]]:
        from greenlang_crypto.metrics import ReencryptionProgress

        p = ReencryptionProgress()
        return p, "_lock", lambda: (p.add("success", 2), p.snapshot()[0])[1] == {"success": 2}

    def metrics() -> tuple[Any, str, Callable[[], Any]]:
        from greenlang_crypto.metrics import EncryptionMetrics

        m = EncryptionMetrics()
        return m, "_lock", lambda: m.observe_kms_call("Decrypt", "ok", 0.01) is None

    def contexts() -> tuple[Any, str, Callable[[], Any]]:
        from greenlang_crypto.sqlalchemy._common import ContextCache

        c = ContextCache("pii")
        return c, "_lock", lambda: c.get("tenant-made-in-child").tenant_id == "tenant-made-in-child"

    def index_keys() -> tuple[Any, str, Callable[[], Any]]:
        from greenlang_crypto._core import DataKey
        from greenlang_crypto.keys.index_keys import IndexKeys

        keys = IndexKeys(lambda record: DataKey.generate(), ttl=60.0)
        return keys, "_lock", lambda: keys.remember_root(1, DataKey.generate()) is None

    def kms_log_filter() -> tuple[Any, str, Callable[[], Any]]:
        from greenlang_crypto.providers import aws_kms

        return aws_kms, "_FILTER_LOCK", lambda: aws_kms.install_botocore_log_redaction() is None

    def pgcrypto_hooks() -> tuple[Any, str, Callable[[], Any]]:
        from greenlang_crypto.sqlalchemy import pgcrypto

        return pgcrypto, "_install_lock", lambda: pgcrypto._install() is None

    def blind_index_keys() -> tuple[Any, str, Callable[[], Any]]:
        from greenlang_crypto.sqlalchemy.blind_index import _KeyCache

        k = _KeyCache()
        return k, "lock", lambda: k.lock.acquire(timeout=1)

    def health_cache() -> tuple[Any, str, Callable[[], Any]]:
        from greenlang_crypto.api.app import _HealthCache

        h = _HealthCache(None, None)  # type: ignore[arg-type]
        return h, "_lock", lambda: h._lock.acquire(timeout=1)

    return [
        ("blind-index column key cache", blind_index_keys),
        ("health check cache", health_cache),
        ("re-encryption progress", progress),
        ("metrics collector", metrics),
        ("column context cache", contexts),
        ("index root keys", index_keys),
        ("botocore log filter", kms_log_filter),
        ("pgcrypto statement hooks", pgcrypto_hooks),
    ]


@pytest.mark.parametrize("make", [pytest.param(m, id=n) for n, m in _lock_cases()])
def test_a_lock_a_parent_thread_held_at_fork_is_free_in_the_child(
    make: Callable[[], tuple[Any, str, Callable[[], Any]]],
) -> None:
    # The parent's lock is held across the fork, as a scrape or request thread would hold it;
    # the child has no such thread, so the call must not wait on it.
    owner, name, call = make()
    lock = getattr(owner, name)
    lock.acquire()
    try:

        def child() -> bool:
            done: list[Any] = []
            worker = threading.Thread(target=lambda: done.append(call()), daemon=True)
            worker.start()
            worker.join(5)
            return done == [True]

        assert fork(child)() is True
    finally:
        lock.release()
    # The parent's own lock is the one it had, free again.
    assert getattr(owner, name) is lock and not lock.locked()
