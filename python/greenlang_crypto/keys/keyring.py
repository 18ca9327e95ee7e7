"""The keyring, and how a key change made by any process reaches every instance.

The keyring holds the key versions, the primary, the minimum decryption version and the
wrapping-key history.

Every key-state change (rotation, retirement, rewrap, index-key change, destroying a wrapping
key) is made in one key-store transaction that also increments a change counter, the
*epoch*. Each instance keeps an immutable :class:`KeyringSnapshot` in memory; the data path
reads it (in fact, the caches built from it) and never queries the database per operation.

Staleness is bounded: a background thread reads the epoch (one single-row read) every
``refresh_seconds`` and reloads the keyring when it moved. On PostgreSQL the same thread also
listens (``LISTEN``) on :data:`~greenlang_crypto.keys.store.NOTIFY_CHANNEL`, so a change normally
arrives within milliseconds; polling is the fallback when a notification is lost. The same
thread writes the instance's heartbeat (host, pid, epoch, primary version, last seen), which
is what makes retirement safe: a version is retired only when no live instance still
encrypts under it.

The minimum decryption version only ever rises, in the store and in every snapshot.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from greenlang_crypto import _forks
from greenlang_crypto._core import monotonic_ns
from greenlang_crypto.exceptions import ConfigurationError, KeyStateError
from greenlang_crypto.keys.store import (
    NOTIFY_CHANNEL,
    IndexKeyRecord,
    InstanceRecord,
    KeyStore,
    KeyVersion,
)

__all__ = [
    "SYSTEM_CLOCK",
    "Keyring",
    "KeyringSnapshot",
    "MonotonicClock",
    "fence_seconds",
    "liveness_seconds",
]

_log = logging.getLogger("greenlang_crypto.keyring")


def liveness_seconds(refresh_seconds: float) -> float:
    """How long after its last heartbeat an instance still counts as live.

    Three missed heartbeats plus a margin for a busy machine. A process suspended for longer
    (SIGSTOP, a frozen VM) no longer blocks a retirement: it fenced itself before that (see
    :func:`fence_seconds` and docs/KEYRING.md).
    """
    return 3.0 * refresh_seconds + 2.0


def fence_seconds(refresh_seconds: float) -> float:
    """How long after a confirmed heartbeat an instance may still seal on its keyring view.

    Two refresh periods plus a second: a healthy instance confirms every period, so the fence
    never closes on it, while it is ``refresh_seconds + 1`` shorter than
    :func:`liveness_seconds`. That margin absorbs clock-rate differences between the instance
    and the database and the time a confirmation takes to commit.
    """
    return 2.0 * refresh_seconds + 1.0


def _new_instance_id() -> str:
    # 128 random bits as hex, the shape uuid4().hex had, without importing uuid (and with it
    # platform) into every process that opens a service.
    return os.urandom(16).hex()


class MonotonicClock(Protocol):
    """A monotonic clock in nanoseconds: the system one, or ``_core.ManualClock`` in tests."""

    def now_ns(self) -> int:
        """The current reading in nanoseconds."""
        ...


class _SystemClock:
    """The system clock the DEK caches read (:func:`~greenlang_crypto._core.monotonic_ns`)."""

    __slots__ = ()

    def now_ns(self) -> int:
        """The current reading of ``monotonic_ns()``."""
        return monotonic_ns()

    def __repr__(self) -> str:
        return "SYSTEM_CLOCK"


#: The clock of a keyring (and of DEK caches) built without one.
SYSTEM_CLOCK: MonotonicClock = _SystemClock()


#: CLOCK_BOOTTIME minus CLOCK_MONOTONIC grows only while the whole machine is suspended.
def _suspended_seconds() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()


@dataclass(frozen=True, slots=True)
class KeyringSnapshot:
    """One consistent view of the keyring, replaced as a whole when anything changes.

    Attributes:
        epoch: The key store's change counter when this view was read.
        versions: Key versions by number.
        primary: The version new encryptions use.
        min_decryption_version: Versions below it refuse to decrypt (only ever rises).
        wrapping_keys: ``(provider, key id)`` of every wrapping key a version has had and an
            operator has not destroyed: inline envelopes may name any of them.
        index_keys: Blind-index root key versions (wrapped), ascending.
        erasing: Tenants being erased now: no instance encrypts for them.
        erasure_epoch: The epoch of the latest tenant-erasure change (0: none yet); when it
            moves, instances drop every cached key (see ``KeyAdmin.erase_tenant``).
    """

    epoch: int
    versions: Mapping[int, KeyVersion]
    primary: KeyVersion
    min_decryption_version: int
    wrapping_keys: frozenset[tuple[str, str]]
    index_keys: tuple[IndexKeyRecord, ...] = field(default=())
    erasing: frozenset[str] = field(default=frozenset())
    erasure_epoch: int = 0


class Keyring:
    """Loads the keyring from a key store and keeps it current in this process.

    Args:
        store: The key store shared by the fleet.
        create_first_version: Called (once, by whichever instance starts first) to obtain
            the provider name and wrapping key of version 1 when the store is empty.
        refresh_seconds: Bound on how stale this instance's view may get; 0 disables the
            background thread (and the heartbeat): tests and benchmarks only.
        clock: The clock fence deadlines are read on (:data:`SYSTEM_CLOCK` when None). The
            caches that receive those deadlines must read the same clock: pass the
            ``ManualClock`` given to them. A machine suspend is still detected on the system
            clocks; it closes the fence (deadline 0), which means the same on any clock.

    Raises:
        ConfigurationError: The store does not have exactly one primary version.
    """

    def __init__(
        self,
        store: KeyStore,
        create_first_version: Callable[[], tuple[str, str]],
        *,
        refresh_seconds: float = 5.0,
        clock: MonotonicClock | None = None,
    ) -> None:
        self._store = store
        #: Where fence deadlines are read from (the caches' clock).
        self.clock: MonotonicClock = SYSTEM_CLOCK if clock is None else clock
        self._create_first = create_first_version
        self.refresh_seconds = refresh_seconds
        #: Seconds a confirmation lets this instance seal (0: not fenced, refresh is off).
        self.fence_seconds = fence_seconds(refresh_seconds) if refresh_seconds > 0 else 0.0
        #: :attr:`clock` reading from which this instance must confirm before sealing again
        #: (None: not fenced). 0 until the first confirmation in :meth:`start`.
        self.fence_deadline_ns: int | None = 0 if self.fence_seconds else None
        self._fence_listeners: list[Callable[[int | None], None]] = []
        self._confirm_lock = threading.Lock()
        self._suspended = _suspended_seconds()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[KeyringSnapshot | None, KeyringSnapshot], None]] = []
        self._tick_listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.instance_id = _new_instance_id()
        self.host = os.uname().nodename
        self.pid = os.getpid()
        self.started_at = time.time()
        self.refreshes = 0
        self.snapshot: KeyringSnapshot = self._read(None)
        _forks.register(self, _forks.KEYRING)

    def _after_fork_in_child(self) -> None:
        # A forked child is another instance: its own id and row, a lock no parent thread can
        # hold, and its own refresh thread (the parent's does not exist here), which ticks at
        # once so the child registers and catches up on changes made since it was forked.
        self._lock = threading.Lock()
        self._confirm_lock = threading.Lock()
        self.instance_id = _new_instance_id()
        self.pid = os.getpid()
        self.started_at = time.time()
        self.refreshes = 0
        # The parent's confirmations speak for the parent's row, not for this new instance:
        # it seals only once it has confirmed its own view.
        if self.fence_deadline_ns is not None:
            self._set_fence(0, lower=True)
        if self._thread is not None and not self._stop.is_set():
            self._stop = threading.Event()
            self._thread = None
            self._spawn(tick_first=True)

    # -- loading -------------------------------------------------------------------------

    def _read(self, previous: KeyringSnapshot | None) -> KeyringSnapshot:
        # Read the counter first: a change committed after this read bumps it again, so the
        # next poll reloads; the other order could miss a change for good.
        epoch = self._store.epoch()
        versions = self._store.versions()
        if not versions:
            provider_name, first_key = self._create_first()
            self._store.add_first_version(provider_name, first_key)
            epoch = self._store.epoch()
            versions = self._store.versions()
        primary = [v for v in versions if v.state == "primary"]
        if len(primary) != 1:
            raise ConfigurationError("the keyring must have exactly one primary version")
        minimum = self._store.min_decryption_version()
        if previous is not None:
            minimum = max(minimum, previous.min_decryption_version)
        wrapping = frozenset(
            (w.provider, w.wrapping_key_id)
            for w in self._store.wrapping_keys()
            if w.destroyed_at is None
        ) | {(v.provider, v.wrapping_key_id) for v in versions}
        return KeyringSnapshot(
            epoch=epoch,
            versions={v.version: v for v in versions},
            primary=primary[0],
            min_decryption_version=minimum,
            wrapping_keys=wrapping,
            index_keys=tuple(self._store.index_keys()),
            erasing=self._store.erasures.erasing(),
            erasure_epoch=self._store.erasures.last_change(),
        )

    def reload(self) -> KeyringSnapshot:
        """Reads the whole keyring now and tells the listeners if anything changed."""
        with self._lock:
            old = self.snapshot
            new = self._read(old)
            self.snapshot = new
            self.refreshes += 1
            if new != old:
                for listener in list(self._listeners):
                    listener(old, new)
        return new

    def refresh(self) -> bool:
        """Reloads when the store's change counter moved; returns whether it did."""
        if self._store.epoch() == self.snapshot.epoch:
            return False
        self.reload()
        return True

    def confirms_epoch(self, epoch: int) -> bool:
        """Whether the key store has reached ``epoch`` (reloading the keyring when it has).

        For values from elsewhere (a shared cache entry) that claim a newer epoch than the one
        loaded: they count only once the key store itself confirms it.
        """
        if epoch <= self.snapshot.epoch:
            return True
        self.refresh()
        return epoch <= self.snapshot.epoch

    def add_listener(
        self, listener: Callable[[KeyringSnapshot | None, KeyringSnapshot], None]
    ) -> None:
        """Calls ``listener(old, new)`` (under the keyring lock) after every change."""
        self._listeners.append(listener)

    def add_fence_listener(self, listener: Callable[[int | None], None]) -> None:
        """Calls ``listener(deadline_ns)`` whenever the fence deadline moves."""
        self._fence_listeners.append(listener)

    def add_tick_listener(self, listener: Callable[[], None]) -> None:
        """Calls ``listener()`` on every background tick (for periodic cache purges)."""
        self._tick_listeners.append(listener)

    # -- fleet ---------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Confirms this instance's view now (see :meth:`confirm`); a no-op when unfenced."""
        self.confirm()

    def confirm(self) -> bool:
        """Confirms that this instance's keyring view is current, and says so in its row.

        One statement writes the heartbeat only if the key store's change counter still
        equals the snapshot's (reloading and trying again when it moved). On success the
        fence moves to the monotonic time read *before* the statement was sent plus
        :attr:`fence_seconds`: a confirmation that took long, or a process paused after it,
        only shortens what it grants. Returns whether the view was confirmed.

        Raises:
            KeyStoreUnavailableError: The key store could not be reached.
        """
        if not self.fence_seconds:
            return True
        if self._stop.is_set():
            return False  # a stopped instance has deregistered: it seals no more
        with self._confirm_lock:
            # Each failed round loaded a newer view; only a burst of key changes (racing
            # rotations) makes more than one necessary.
            for _ in range(50):
                started = self.clock.now_ns()
                with self._lock:
                    # Under the keyring lock: the snapshot read here has been applied by
                    # every listener (the service's caches follow it) before it is confirmed.
                    snap = self.snapshot
                confirmed = self._store.heartbeat(
                    self.instance_id,
                    host=self.host,
                    pid=self.pid,
                    epoch=snap.epoch,
                    primary_version=snap.primary.version,
                    min_version=snap.min_decryption_version,
                    started_at=self.started_at,
                    expected_epoch=snap.epoch,
                    fence_seconds=self.fence_seconds,
                )
                if confirmed:
                    self._set_fence(started + int(self.fence_seconds * 1e9))
                    return True
                self.reload()
            return False

    def _set_fence(self, deadline_ns: int, *, lower: bool = False) -> None:
        current = self.fence_deadline_ns
        if current is None or (not lower and deadline_ns <= current):
            return
        self.fence_deadline_ns = deadline_ns
        for listener in list(self._fence_listeners):
            listener(deadline_ns)

    def close_fence(self) -> None:
        """Makes the next seal confirm first (after a suspend, or when stopping)."""
        if self.fence_deadline_ns is not None:
            self._set_fence(0, lower=True)

    def live_instances(self) -> list[InstanceRecord]:
        """Instances whose last heartbeat is within the liveness window (the store's clock).

        An instance that records a longer fence than this keyring's window stays live for
        its own fence plus a margin (see :meth:`KeyStore.live_instances`).
        """
        return self._store.live_instances(liveness_seconds(self.refresh_seconds))

    # -- background refresh --------------------------------------------------------------

    def start(self) -> None:
        """Registers this instance and starts the refresh thread (no-op when disabled)."""
        if self.refresh_seconds <= 0 or self._thread is not None:
            return
        if not self.confirm():
            raise KeyStateError("the keyring kept changing while this instance registered")
        self._spawn(tick_first=False)

    def _spawn(self, *, tick_first: bool) -> None:
        # The thread holds only a weak reference to this keyring, so an owner that is never
        # closed still gets collected, and the thread then ends on its own.
        ref = weakref.ref(self)
        stop = self._stop
        listen_dsn = self._store.listen_dsn
        notify = self._store.notify
        self._thread = threading.Thread(
            target=_refresh_loop,
            args=(ref, stop, self.refresh_seconds, listen_dsn, notify, tick_first),
            name=f"glc-keyring-{self.instance_id[:8]}",
            daemon=True,
        )
        self._thread.start()

    def _tick(self) -> None:
        suspended = _suspended_seconds()
        if suspended - self._suspended > 1.0:
            # The machine was suspended: the monotonic clock the fence runs on stood still
            # meanwhile, so the deadline cannot be trusted. Confirm before sealing again.
            self.close_fence()
        self._suspended = suspended
        try:
            self.confirm()
        except Exception as exc:  # a store outage must not kill the thread; retried next tick
            _log.warning("keyring confirmation failed: %s", type(exc).__name__)
        for listener in list(self._tick_listeners):
            try:
                listener()
            except Exception as exc:
                _log.warning("keyring tick listener failed: %s", type(exc).__name__)

    def stop(self, *, deregister: bool = True) -> None:
        """Stops the refresh thread, closes the fence and removes this instance's row."""
        self._stop.set()
        self.close_fence()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        if deregister and self.refresh_seconds > 0:
            try:
                self._store.remove_instance(self.instance_id, retry_seconds=0.0)
            except Exception as exc:  # the row expires on its own after the liveness window
                _log.warning("could not deregister instance: %s", type(exc).__name__)

    def __repr__(self) -> str:
        snap = self.snapshot
        return (
            f"Keyring(epoch={snap.epoch}, primary={snap.primary.version}, "
            f"min={snap.min_decryption_version}, instance={self.instance_id[:8]})"
        )


def _refresh_loop(
    ref: weakref.ReferenceType[Keyring],
    stop: threading.Event,
    period: float,
    listen_dsn: str | None,
    notify: Callable[[str], None],
    tick_first: bool = False,
) -> None:
    """Body of the refresh thread: wait for a notification or the period, then tick."""
    listener = _Listener(listen_dsn, notify) if listen_dsn else None
    try:
        if tick_first:
            keyring = ref()
            if keyring is None:
                return
            keyring._tick()
            del keyring
        while not stop.is_set():
            if listener is not None:
                listener.wait(period, stop)
            else:
                stop.wait(period)
            if stop.is_set():
                return
            keyring = ref()
            if keyring is None:
                return
            keyring._tick()
            del keyring
    finally:
        if listener is not None:
            listener.close()


class _Listener:
    """A dedicated PostgreSQL connection in autocommit mode that LISTENs for key changes.

    - After every (re)connection :meth:`wait` returns at once, so the keyring catches up on
      whatever changed while it was not listening.
    - A connection that fails is closed and reopened on the next round (with backoff), the
      round itself falling back to polling.
    - Where notifications cannot arrive (a transaction-mode pooler hands each statement to
      whichever server connection is free, so LISTEN registers on one the client never
      reads), a probe notification sent right after LISTEN never comes back: the listener
      then polls for good.
    """

    def __init__(self, dsn: str, notify: Callable[[str], None]) -> None:
        self._dsn = dsn
        self._notify = notify
        self._conn: Any = None
        self._failures = 0
        self._retry_at = 0.0
        self.available = True

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            # The probe goes to a channel of this connection's own, so it wakes no other
            # instance (after a failover every instance reconnects at once), and is sent from
            # another session (the key store's pool), as key changes are: a session hears its
            # own notifications even through a pooler that would lose everyone else's.
            probe = f"glc_probe_{_new_instance_id()}"
            conn.execute(f"LISTEN {probe}")
            self._notify(probe)
            # A key-change notification may arrive first; the tick right after connecting
            # catches up on it anyway.
            heard = any(n.channel == probe for n in conn.notifies(timeout=2.0))
            conn.execute(f"UNLISTEN {probe}")
        except Exception:
            conn.close()
            raise
        if not heard:
            conn.close()
            self.available = False
            _log.warning("keyring LISTEN is unavailable here (a pooler?): polling instead")
            return None
        return conn

    def wait(self, period: float, stop: threading.Event) -> None:
        if not self.available or (self._conn is None and time.monotonic() < self._retry_at):
            stop.wait(period)  # poll at the usual period meanwhile
            return
        try:
            if self._conn is None:
                self._conn = self._connect()
                self._failures = 0
                if self._conn is None:
                    stop.wait(period)
                return  # (re)connected: catch up now
            # Wake at the first notification or after the period, whichever comes first.
            for _ in self._conn.notifies(timeout=period, stop_after=1):
                pass
        except Exception as exc:
            self._failures += 1
            _log.warning("keyring LISTEN failed, polling instead: %s", type(exc).__name__)
            self.close()
            # Reconnect attempts back off (up to 30 s apart); polling goes on meanwhile.
            self._retry_at = time.monotonic() + min(0.5 * 2**self._failures, 30.0)
            stop.wait(period)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # closing a broken connection: nothing left to do
                _log.debug("closing the LISTEN connection failed: %s", type(exc).__name__)
