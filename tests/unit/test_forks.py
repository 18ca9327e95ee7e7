"""Per-process state after fork: what the child hook re-arms, in which order, held weakly.

The hook is called directly on private registries (the process's own registries hold live
objects of other tests, which must not be re-armed in this process); one test forks for real
to show the hook is installed.
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from types import SimpleNamespace
from typing import Any

import pytest

from greenlang_crypto import _forks
from tests._forking import fork


@pytest.fixture
def registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty registries for one test, so the hook touches only what the test registers."""
    monkeypatch.setattr(
        _forks, "_registered", (weakref.WeakSet(), weakref.WeakSet(), weakref.WeakSet())
    )
    monkeypatch.setattr(_forks, "_lock_owners", weakref.WeakKeyDictionary())


class Rearmable:
    """Records, in a shared list, when it was re-armed; may fail instead."""

    def __init__(self, label: str, log: list[str], *, fail: bool = False) -> None:
        self.label = label
        self.log = log
        self.fail = fail

    def _after_fork_in_child(self) -> None:
        if self.fail:
            raise RuntimeError("secret detail that must not be logged")
        self.log.append(self.label)


def test_the_phases_are_ordered_stores_first() -> None:
    assert (_forks.STORE, _forks.KEYRING, _forks.AUDIT) == (0, 1, 2)


@pytest.mark.usefixtures("registries")
def test_objects_are_rearmed_by_phase_whatever_the_registration_order() -> None:
    log: list[str] = []
    audit = Rearmable("audit", log)
    keyring = Rearmable("keyring", log)
    store = Rearmable("store", log)
    _forks.register(audit, _forks.AUDIT)
    _forks.register(keyring, _forks.KEYRING)
    _forks.register(store, _forks.STORE)
    _forks._after_fork_in_child()
    assert log == ["store", "keyring", "audit"]


@pytest.mark.usefixtures("registries")
def test_one_failing_object_is_logged_by_type_and_the_others_still_rearm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    broken = Rearmable("broken", log, fail=True)
    fine = Rearmable("fine", log)
    _forks.register(broken, _forks.STORE)
    _forks.register(fine, _forks.KEYRING)
    with caplog.at_level(logging.WARNING, logger="greenlang_crypto._forks"):
        _forks._after_fork_in_child()
    assert log == ["fine"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["re-arming Rearmable after fork failed: RuntimeError"]
    assert "secret" not in caplog.text


@pytest.mark.usefixtures("registries")
def test_registration_keeps_nothing_alive() -> None:
    log: list[str] = []
    obj = Rearmable("gone", log)
    ref = weakref.ref(obj)
    _forks.register(obj, _forks.STORE)
    _forks.fresh_locks_after_fork(obj, "lock")
    del obj
    gc.collect()
    assert ref() is None
    _forks._after_fork_in_child()
    assert log == []
    assert len(_forks._lock_owners) == 0


@pytest.mark.usefixtures("registries")
def test_named_locks_are_replaced_by_new_unlocked_ones_before_objects_rearm() -> None:
    seen: list[bool] = []

    class Owner:
        def __init__(self) -> None:
            self.a = threading.Lock()
            self.b = threading.Lock()
            self.untouched = threading.Lock()

        def _after_fork_in_child(self) -> None:
            # Re-arming may take the object's locks: they must be free already.
            seen.append(self.a.acquire(blocking=False))
            self.a.release()

    owner = Owner()
    old_a, old_b, old_other = owner.a, owner.b, owner.untouched
    old_a.acquire()  # as if a parent thread held it at the fork
    old_other.acquire()
    _forks.fresh_locks_after_fork(owner, "a", "b")
    _forks.register(owner, _forks.AUDIT)
    _forks._after_fork_in_child()
    assert seen == [True]
    assert owner.a is not old_a and owner.b is not old_b
    assert not owner.a.locked() and not owner.b.locked()
    assert owner.untouched is old_other and owner.untouched.locked()
    old_a.release()
    old_other.release()


@pytest.mark.usefixtures("registries")
def test_naming_locks_again_replaces_the_earlier_names() -> None:
    class Owner:
        def __init__(self) -> None:
            self.first = threading.Lock()
            self.second = threading.Lock()

    owner = Owner()
    first, second = owner.first, owner.second
    _forks.fresh_locks_after_fork(owner, "first")
    _forks.fresh_locks_after_fork(owner, "second")
    _forks._after_fork_in_child()
    assert owner.first is first
    assert owner.second is not second


def test_clear_http_pools_closes_the_inherited_pool_manager() -> None:
    cleared: list[bool] = []
    manager = SimpleNamespace(clear=lambda: cleared.append(True))
    client = SimpleNamespace(
        _endpoint=SimpleNamespace(http_session=SimpleNamespace(_manager=manager))
    )
    _forks.clear_http_pools(client)
    assert cleared == [True]


@pytest.mark.parametrize(
    "client",
    [
        object(),
        SimpleNamespace(_endpoint=None),
        SimpleNamespace(_endpoint=SimpleNamespace(http_session=SimpleNamespace())),
        SimpleNamespace(
            _endpoint=SimpleNamespace(http_session=SimpleNamespace(_manager=SimpleNamespace()))
        ),
        SimpleNamespace(
            _endpoint=SimpleNamespace(
                http_session=SimpleNamespace(_manager=SimpleNamespace(clear="not callable"))
            )
        ),
    ],
)
def test_clear_http_pools_ignores_clients_without_a_pool(client: Any) -> None:
    _forks.clear_http_pools(client)  # no AttributeError, nothing to close


class LockHolder:
    """A weak-referenceable owner of one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


def test_a_real_fork_runs_the_hook_in_the_child_only() -> None:
    holder = LockHolder()
    _forks.fresh_locks_after_fork(holder, "lock")
    holder.lock.acquire()
    try:
        result = fork(lambda: {"free_in_child": holder.lock.acquire(timeout=2)})()
        assert result == {"free_in_child": True}
        assert holder.lock.locked()  # the parent's lock is its own, still held
    finally:
        holder.lock.release()
