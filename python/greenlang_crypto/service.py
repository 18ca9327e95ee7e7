"""EncryptionService: the one facade that the API, the CLI and the SQLAlchemy types call.

Encryption (envelope encryption, NIST SP 800-38D AES-256-GCM):

1. The context is validated and canonicalized (:class:`EncryptionContext`).
2. The encryption cache, keyed by (provider, wrapping key, key version, context digest), holds
   an :class:`~greenlang_crypto._core.EnvelopeSealer`; a hit seals in one Rust call.
3. On a miss, one thread per cache key (single-flight) asks the provider for a DEK bound to the
   context; with stored references the wrapped DEK is committed to the key store first.

Decryption parses the public header, checks the key version against the keyring, and opens
with a cached DEK, or unwraps the DEK through the provider (KMS Decrypt) on a miss. Every
authentication failure is one opaque :class:`DecryptionError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenlang_crypto import _forks, composition
from greenlang_crypto import streams as _streams
from greenlang_crypto._core import (
    STREAM_DEFAULT_SEGMENT,
    STREAM_MAX_SEGMENT,
    STREAM_MIN_SEGMENT,
    BlindIndexKey,
    CachedOpener,
    CachedSealer,
    DataKey,
    DekCache,
    EnvelopeSealer,
    StreamDecryptor,
    StreamEncryptor,
    monotonic_ns,
    open_envelope,
    parse_envelope,
    parse_stream_header,
    stored_key_ref_id,
)
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.events import (
    DecryptionPerformed,
    EncryptionPerformed,
    KeyChangeGuard,
    ServiceEvent,
    ServiceObserver,
    TypedServiceObserver,
    make_event,
)
from greenlang_crypto.exceptions import (
    ConfigurationError,
    DecryptionError,
    GreenlangCryptoError,
    InvalidArgumentError,
    InvalidContextError,
    InvalidEnvelopeError,
    KeyNotFoundError,
    KeyRetiredError,
    KeyStateError,
    KeyStoreUnavailableError,
    KeyUsageExceededError,
    KeyVersionUnavailableError,
    KmsAccessDeniedError,
    PayloadTooLargeError,
)
from greenlang_crypto.keys.branch import (
    BRANCH_DEK_PREFIX,
    BranchKeys,
    ScopeMapper,
    dek_cache_id,
)
from greenlang_crypto.keys.index_keys import INDEX_ROOT_CONTEXT, IndexKeys
from greenlang_crypto.keys.keyring import Keyring, KeyringSnapshot
from greenlang_crypto.keys.store import (
    IndexKeyRecord,
    InstanceRecord,
    KeyStore,
    KeyVersion,
)
from greenlang_crypto.providers.base import (
    CreatesMasterKeys,
    EnforcesKeyAllowList,
    GeneratedDataKey,
    KeyLimits,
    KeyProvider,
    NamesCurrentKey,
    ProviderHealth,
    ReportsRotationStatus,
    RotatesKeyOnDemand,
)
from greenlang_crypto.stats import CacheCounters, LatencyHistogram, OperationCount, ServiceStats

if TYPE_CHECKING:
    from greenlang_crypto._core import EnvelopeHeader
    from greenlang_crypto.keys.store import DekRecord
    from greenlang_crypto.redis_cache import RedisKeyCache

__all__ = ["EncryptionService", "RotationResult", "ServiceStats", "ServiceStatus"]

_log = logging.getLogger("greenlang_crypto.service")
_FLIGHT_STRIPES = 256
#: Stored DEK ids are 63-bit (the databases' signed BIGINT); headers may carry any 64 bits.
_MAX_DEK_ID = 2**63
#: Key-reference kinds: a DEK id in the key store, the wrapped DEK in the envelope, or a
#: branch key id and salt (the DEK derived from a branch key).
_REFERENCES = ("stored", "inline", "branch")

ContextLike = EncryptionContext | Mapping[str, str]

#: The context that binds blind-index root keys at the provider (kept for importers).
_INDEX_ROOT_CONTEXT = INDEX_ROOT_CONTEXT


@dataclass(frozen=True, slots=True)
class RotationResult:
    """Outcome of :meth:`EncryptionService.rotate`.

    Attributes:
        old_version: The previous primary version.
        new_version: The new primary version.
        wrapping_key_id: The wrapping key of the new version.
    """

    old_version: int | None
    new_version: int
    wrapping_key_id: str


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """A snapshot for ``status`` commands and health checks.

    Attributes:
        provider: Provider name.
        provider_ok: Whether the provider answered its health check.
        provider_detail: The provider's health detail.
        primary_version: The primary key version.
        min_decryption_version: The lowest version allowed to decrypt.
        versions: All key versions.
        deks_by_version: Stored DEKs per version.
        usage_by_version: Per version: stored DEKs, messages and bytes sealed under them.
        cache: Encryption and decryption cache counters.
        keyring_epoch: The key store change counter this instance has loaded.
        instances: Instances registered in the key store, most recently seen first.
    """

    provider: str
    provider_ok: bool
    provider_detail: str
    primary_version: int
    min_decryption_version: int
    versions: list[KeyVersion]
    deks_by_version: dict[int, int]
    usage_by_version: dict[int, tuple[int, int, int]]
    cache: dict[str, dict[str, int]]
    keyring_epoch: int = 0
    instances: list[InstanceRecord] = field(default_factory=list)


def _stop_keyring(keyring: Keyring) -> None:
    # Runs at close() or when the service is collected (weakref.finalize), at most once.
    try:
        keyring.stop()
    except Exception as exc:  # interpreter shutdown: the row expires by itself
        _log.debug("keyring stop failed: %s", type(exc).__name__)


def _as_context(context: ContextLike) -> EncryptionContext:
    if isinstance(context, EncryptionContext):
        return context
    if isinstance(context, Mapping):
        return EncryptionContext.from_mapping(context)
    raise InvalidContextError("context must be an EncryptionContext or a mapping")


def _as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        # Copy so a caller mutating the buffer later cannot alter what was encrypted.
        return bytes(value)
    if value is None:
        raise TypeError(f"{name} must be bytes, not None")
    raise TypeError(f"{name} must be bytes, bytearray or memoryview, not {type(value).__name__}")


def _aad(associated_data: bytes | None) -> bytes | None:
    if associated_data is None:
        return None
    if not isinstance(associated_data, bytes):
        raise TypeError("associated_data must be bytes or None")
    return associated_data


#: Why a seal is refused when the fence has passed and the key store cannot be reached.
_UNCONFIRMED = "cannot encrypt: the keyring could not be confirmed (key store unreachable)"


class EncryptionService:
    """Envelope encryption with cached DEKs, key versions and rotation.

    Args:
        config: The configuration (default: the embedded local provider in ``data_dir``).
        provider: A key provider to use instead of the one the config describes.
        key_store: A key store to use instead of the one the config describes.
        observers: Receivers of service events (audit, metrics); see :mod:`.events`.
        per_operation_events: Also emit an event for every encrypt and decrypt.
        branch_scope: Which branch key a context uses with ``key_reference="branch"``:
            ``service``, ``tenant`` or a callable mapping a context to a scope name
            (default: ``config.branch_key_scope``); see :mod:`.keys.branch`.
        key_cache: A shared Redis cache of wrapped key records (default: built from
            ``config.key_cache_url`` when set); see :mod:`.redis_cache`.

    Raises:
        ConfigurationError: The configuration is unusable (for example no master key yet).
    """

    def __init__(
        self,
        config: EncryptionServiceConfig | None = None,
        *,
        provider: KeyProvider | None = None,
        key_store: KeyStore | None = None,
        observers: Iterable[ServiceObserver | TypedServiceObserver] = (),
        per_operation_events: bool = False,
        branch_scope: str | ScopeMapper | None = None,
        key_cache: RedisKeyCache | None = None,
    ) -> None:
        self.config = config or EncryptionServiceConfig()
        self._observers: tuple[ServiceObserver | TypedServiceObserver, ...] = tuple(observers)
        # Per-operation events cost a Python call per encrypt/decrypt; by default operations
        # are counted in Rust atomics instead (see operation_counts()).
        self._per_op = per_operation_events and bool(self._observers)
        self._failures: Counter[tuple[str, str]] = Counter()
        self._slow_counts: Counter[tuple[str, str]] = Counter()
        # Streams, counted once each when they finish: (operation, data class) -> [ops, bytes].
        self._stream_counts: dict[tuple[str, str], list[int]] = {}
        self.provider: KeyProvider = provider or composition.build_provider(self.config)
        self.store = key_store or composition.build_key_store(self.config)
        self._limits = KeyLimits(max_messages=self.config.max_messages_per_dek)
        ttl = self.config.cache_ttl_seconds
        self._cache_ttl = ttl
        self._keyring_epoch: tuple[int, str] | None = None
        self._retired_enc_counts: Counter[str] = Counter()
        self._retired_enc_bytes: Counter[str] = Counter()
        self._dec_cache = DekCache(self.config.cache_max_entries, ttl)
        self._refresh_after = ttl * self.config.refresh_ahead_fraction
        self._max_plaintext = self.config.max_plaintext_bytes
        self._default_reference = self.config.key_reference
        # Single-flight locks, striped: a lock per cache key would grow without bound under
        # many distinct contexts (a denial of service); two keys sharing a stripe only queue.
        self._flights = [threading.Lock() for _ in range(_FLIGHT_STRIPES)]
        self._state_lock = threading.Lock()
        _forks.register(self, _forks.STORE)
        # Stored DEKs this process seals with (and when it started to), so their use counts
        # reach the key store; entries leave after the TTL so no key outlives its cache.
        self._usage_track: dict[int, tuple[DataKey, float]] = {}
        self._index = IndexKeys(self._unwrap_index_root, ttl)
        self._wrapping_keys: frozenset[tuple[str, str]] = frozenset()
        self._keyring = Keyring(
            self.store,
            self._first_version,
            refresh_seconds=self.config.keyring_refresh_seconds,
        )
        # Self-fencing: seals stop at this deadline until the keyring confirms its view again.
        self._fence_lock = threading.Lock()
        self._fence_retry_at = 0.0
        self._branches = self._build_branch_keys(branch_scope, key_cache)
        self._apply_snapshot(None, self._keyring.snapshot)
        # The keyring (and its thread) must not keep the service alive: weak callbacks.
        on_change = weakref.WeakMethod(self._apply_snapshot)
        on_tick = weakref.WeakMethod(self._purge_expired)
        on_fence = weakref.WeakMethod(self._apply_fence)

        def fenced(deadline_ns: int | None) -> None:
            method = on_fence()
            if method is not None:
                method(deadline_ns)

        def changed(old: KeyringSnapshot | None, new: KeyringSnapshot) -> None:
            method = on_change()
            if method is not None:
                method(old, new)

        def tick() -> None:
            method = on_tick()
            if method is not None:
                method()

        self._keyring.add_listener(changed)
        self._keyring.add_tick_listener(tick)
        self._keyring.add_fence_listener(fenced)
        self._keyring.start()
        self._finalizer = weakref.finalize(self, _stop_keyring, self._keyring)

    @classmethod
    def init_local(
        cls,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        config: EncryptionServiceConfig | None = None,
    ) -> EncryptionService:
        """Creates the embedded default if it does not exist yet, and returns a service on it.

        Idempotent and safe to call from several processes at once: the first caller creates
        the data directory (0700), the first master key (0600) and the keyring; later callers
        find them. Nothing needs AWS or a server.

        Args:
            data_dir: The data directory (default: ``$GLC_DATA_DIR`` or ``~/.greenlang-crypto``).
            config: A full configuration instead (its ``data_dir`` is used; its provider must
                be ``local``).

        Raises:
            ConfigurationError: ``config`` names another provider, or both arguments are given.
        """
        import fcntl

        from greenlang_crypto.providers.local import LocalKeyProvider

        if config is not None and data_dir is not None:
            raise ConfigurationError("pass data_dir or config, not both")
        if config is None:
            config = (
                EncryptionServiceConfig(data_dir=Path(data_dir))
                if data_dir is not None
                else EncryptionServiceConfig()
            )
        if config.provider != "local":
            raise ConfigurationError("init_local needs the local provider")
        directory = Path(config.data_dir)
        old_umask = os.umask(0o077)
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        finally:
            os.umask(old_umask)
        # One initializer at a time across processes: two first callers racing would otherwise
        # both create "master key version 1".
        lock_fd = os.open(directory / ".init.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            provider = LocalKeyProvider(directory)
            if not provider.versions():
                provider.create_master_key()
            return cls(config, provider=provider)
        finally:
            os.close(lock_fd)

    def _build_branch_keys(
        self, scope: str | ScopeMapper | None, key_cache: RedisKeyCache | None
    ) -> BranchKeys:
        if key_cache is None:
            key_cache = composition.build_key_cache(self.config)
        keyring = self._keyring
        return BranchKeys(
            self.store,
            self.provider,
            scope or self.config.branch_key_scope,
            ttl=self.config.cache_ttl_seconds,
            max_entries=self.config.cache_max_entries,
            epoch=lambda: keyring.snapshot.epoch,
            shared_cache=key_cache,
            emit=self._emit,
        )

    def _first_version(self) -> tuple[str, str]:
        return self.provider.name, self._initial_wrapping_key()

    def _load_keyring(self) -> None:
        """Re-reads the keyring now (admin paths; the data path never calls this)."""
        self._keyring.reload()

    def _apply_snapshot(self, old: KeyringSnapshot | None, new: KeyringSnapshot) -> None:
        """Makes a new keyring view current: caches follow it before anything else can.

        Called by the keyring (under its lock) after every change it loads, whichever process
        made the change.
        """
        with self._state_lock:
            self._versions = dict(new.versions)
            self._wrapping_keys = new.wrapping_keys
            if new.min_decryption_version > self._dec_cache.min_key_version:
                # Raise the floor inside the Rust cache first, so no hit below it is served
                # from here on, then drop the keys of retired versions. Inserts of keys fetched
                # concurrently check the minimum under this same lock (see _data_key_for).
                self._dec_cache.raise_min_key_version(new.min_decryption_version)
                self._dec_cache.clear()
            self._min_version = new.min_decryption_version
            self._primary = new.primary
            epoch = (new.primary.version, new.primary.wrapping_key_id)
            if epoch != self._keyring_epoch:
                self._keyring_epoch = epoch
                self._replace_enc_caches()
            if old is not None and old.wrapping_keys - new.wrapping_keys:
                # A wrapping key was destroyed: DEKs unwrapped under it must go too.
                self._dec_cache.clear()
            if old is not None and old.index_keys != new.index_keys:
                retired = {r.version for r in new.index_keys if r.state == "retired"}
                for version in retired:
                    self._index.forget(version)
            if old is not None and old.epoch != new.epoch:
                self._apply_branch_changes()

    def _apply_branch_changes(self) -> None:
        """Follows branch-key rotations and deletions made by any instance.

        New DEKs are derived from the current branch keys (the branch encryption cache starts
        over: a derivation costs no KMS call); after a deletion or rewrap, DEKs derived from
        branch keys are dropped from the decryption cache too.
        """
        try:
            changed, dropped = self._branches.apply_changes()
        except Exception as exc:  # the store is down: the next epoch change retries
            _log.warning("branch key changes not loaded: %s", type(exc).__name__)
            return
        if changed:
            self._replace_enc_caches(only="branch")
        if dropped:
            self._dec_cache.remove_prefix(BRANCH_DEK_PREFIX)

    def _purge_expired(self) -> None:
        """Drops every cached key past its TTL (called by the keyring's background thread)."""
        self._dec_cache.purge_expired()
        for cache in self._enc_caches.values():
            cache.purge_expired()
        self._index.purge()
        self._branches.purge()
        self._prune_usage()

    def _initial_wrapping_key(self) -> str:
        if self.config.provider == "aws-kms" and self.config.kms_key_ids:
            return self.config.kms_key_ids[0]
        if isinstance(self.provider, NamesCurrentKey):
            return str(self.provider.current_key_id())
        raise ConfigurationError("cannot determine the wrapping key id for version 1")

    def _replace_enc_caches(self, only: str | None = None) -> None:
        """Starts new encryption caches (one per key-reference kind), keyed by canonical context.

        Caches are replaced rather than cleared when the primary version changes: a thread
        that was fetching a DEK for the old version puts it into the old, unreachable cache,
        so new writes can never pick up a stale version. ``only`` replaces one kind's cache
        (``branch`` after a branch-key rotation).
        """
        old = getattr(self, "_enc_caches", None)
        if old is not None:
            for ref, cache in old.items():
                if only is not None and ref != only:
                    continue
                for label, (ops, nbytes) in cache.counts().items():
                    self._retired_enc_counts[label] += ops
                    self._retired_enc_bytes[label] += nbytes
        caches = {
            ref: DekCache(self.config.cache_max_entries, self._cache_ttl)
            if old is None or only is None or ref == only
            else old[ref]
            for ref in _REFERENCES
        }
        deadline = self._keyring.fence_deadline_ns
        for cache in caches.values():
            cache.set_fence(deadline)
        self._enc_caches = caches
        self._enc_cache = caches[self._default_reference]
        if old is not None:
            for ref, cache in old.items():
                if caches[ref] is not cache:
                    # A thread that read the old cache before the switch must not seal
                    # through it after this instance has confirmed the new view.
                    cache.set_fence(0)

    def _track_usage(self, dek_id: int, key: DataKey) -> None:
        with self._state_lock:
            self._usage_track[dek_id] = (key, time.monotonic())
            if len(self._usage_track) > 4 * self.config.cache_max_entries:
                # Write out and forget the oldest half; their counters are final or nearly so.
                old = list(self._usage_track.items())[: len(self._usage_track) // 2]
                for k, _ in old:
                    del self._usage_track[k]
            else:
                old = []
        if old:
            self.store.record_usage({i: (k.messages_used, k.bytes_used) for i, (k, _) in old})

    def _prune_usage(self, *, everything: bool = False) -> None:
        """Writes out and forgets tracked DEKs past the TTL (or all of them).

        A DEK past the TTL is out of every cache, so its counters are final; holding it any
        longer would keep the key itself alive.
        """
        cutoff = time.monotonic() - self._cache_ttl
        with self._state_lock:
            old = [
                (i, entry)
                for i, entry in self._usage_track.items()
                if everything or entry[1] <= cutoff
            ]
            for i, _ in old:
                del self._usage_track[i]
        if old:
            try:
                self.store.record_usage(
                    {i: (k.messages_used, k.bytes_used) for i, (k, _) in old},
                    retry_seconds=0.0 if everything else None,
                )
            except KeyStoreUnavailableError as exc:
                # The counts inform status reports; dropping keys must never wait on them.
                _log.warning("use counts not recorded: %s", type(exc).__name__)

    def flush_usage(self, *, retry_seconds: float | None = None) -> None:
        """Writes the use counts (messages, bytes) of this process's stored DEKs to the store.

        Raises:
            KeyStoreUnavailableError: The key store could not be reached within the bound.
        """
        with self._state_lock:
            items = list(self._usage_track.items())
        self.store.record_usage(
            {i: (k.messages_used, k.bytes_used) for i, (k, _) in items},
            retry_seconds=retry_seconds,
        )
        self._prune_usage()

    # -- events --------------------------------------------------------------------------

    def _emit(self, event: str, **fields: object) -> None:
        typed: ServiceEvent | None = None
        for observer in self._observers:
            try:
                if isinstance(observer, TypedServiceObserver):
                    # One frozen event object per emission, shared by the typed observers.
                    if typed is None:
                        typed = make_event(event, fields)
                    observer.on_service_event(typed)
                else:
                    observer.on_event(event, fields)
            except Exception as exc:  # an observer must never break the data path
                _log.warning("observer %r failed on %s: %s", observer, event, type(exc).__name__)

    def _failed(
        self, event: str, operation: str, exc: BaseException, ctx: EncryptionContext | None
    ) -> None:
        error_type = type(exc).__name__
        self._failures[(operation, error_type)] += 1
        if self._observers:
            self._emit(
                event,
                error_type=error_type,
                reason=getattr(exc, "reason", "other"),
                data_class=ctx.data_class if ctx is not None else None,
                context_digest=ctx.digest.hex() if ctx is not None else None,
                key_version=getattr(exc, "key_version", None),
            )

    def failure_counts(self) -> dict[tuple[str, str], int]:
        """Failures so far by (operation, error type)."""
        return dict(self._failures)

    def operation_counts(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Operations and plaintext bytes by operation and data class.

        Read from the Rust counters of the DEK caches, plus the rare decrypts done outside the
        cache.
        """
        enc: dict[str, tuple[int, int]] = {}
        for label, n in self._retired_enc_counts.items():
            enc[label] = (n, self._retired_enc_bytes[label])
        for cache in self._enc_caches.values():
            for label, (ops, nbytes) in cache.counts().items():
                prev = enc.get(label, (0, 0))
                enc[label] = (prev[0] + ops, prev[1] + nbytes)
        dec = dict(self._dec_cache.counts())
        for (op, label), n in self._slow_counts.items():
            if op == "decrypt":
                ops, nbytes = dec.get(label, (0, 0))
                dec[label] = (ops + n, nbytes)
        with self._state_lock:
            streamed = [(k, tuple(v)) for k, v in self._stream_counts.items()]
        for (op, label), (n, nbytes) in streamed:
            into = enc if op == "encrypt" else dec
            ops, total = into.get(label, (0, 0))
            into[label] = (ops + n, total + nbytes)
        return {"encrypt": enc, "decrypt": dec}

    def latency(self) -> dict[str, tuple[list[float], list[int], float, int, int]]:
        """Sampled latency histograms of cached encrypts and decrypts.

        Each value is ``(bounds, cumulative_counts, sum_seconds, sampled_count, sample_rate)``
        (see ``DekCache.latency``); the encrypt histogram merges both key-reference caches.
        """
        merged: tuple[list[float], list[int], float, int, int] | None = None
        for cache in self._enc_caches.values():
            bounds, cumulative, total, count, rate = cache.latency()
            if merged is None:
                merged = (bounds, cumulative, total, count, rate)
            else:
                merged = (
                    bounds,
                    [a + b for a, b in zip(merged[1], cumulative, strict=True)],
                    merged[2] + total,
                    merged[3] + count,
                    rate,
                )
        assert merged is not None
        return {"encrypt": merged, "decrypt": self._dec_cache.latency()}

    def cache_stats(self) -> dict[str, dict[str, int]]:
        """Encryption and decryption cache counters (cheap; no provider call)."""
        return {"encrypt": self._enc_stats(), "decrypt": self._dec_cache.stats()}

    @property
    def per_operation_events(self) -> bool:
        """Whether every encrypt and decrypt emits an event to the observers."""
        return self._per_op

    def add_observer(self, observer: ServiceObserver | TypedServiceObserver) -> None:
        """Adds an observer (for example an audit log created after the service)."""
        self._observers = (*self._observers, observer)

    def _after_fork_in_child(self) -> None:
        # A parent thread may have been inside a KMS call under a flight lock at the fork.
        self._flights = [threading.Lock() for _ in range(_FLIGHT_STRIPES)]
        self._state_lock = threading.Lock()

    def stats(self) -> ServiceStats:
        """One typed snapshot of the data-path statistics (no provider or key store call).

        Observers (metrics, the audit log's aggregates) are given this method and call it at
        scrape or flush time.
        """
        usage = self.cache_usage()
        return ServiceStats(
            operations={
                op: {dc: OperationCount(n, b) for dc, (n, b) in by_class.items()}
                for op, by_class in self.operation_counts().items()
            },
            failures=self.failure_counts(),
            encrypt_cache=CacheCounters.from_mapping(self._enc_stats()),
            decrypt_cache=CacheCounters.from_mapping(self._dec_cache.stats()),
            oldest_dek_age_seconds=float(usage.get("max_age_seconds", 0.0)),
            max_budget_used=float(usage.get("max_budget_used", 0.0)),
            latency={
                op: LatencyHistogram(tuple(b), tuple(c), total, sampled, rate)
                for op, (b, c, total, sampled, rate) in self.latency().items()
            },
        )

    # -- health and provider facts, for the front doors ---------------------------------

    @property
    def provider_name(self) -> str:
        """The key provider's name (``local``, ``aws-kms``)."""
        return self.provider.name

    def provider_health(self) -> ProviderHealth:
        """The key provider's health check (a KMS request with AWS KMS; never raises)."""
        try:
            return self.provider.health()
        except Exception as exc:  # health checks report, never raise
            return ProviderHealth(False, f"health check failed ({type(exc).__name__})")

    def key_store_health(self) -> bool:
        """Whether the key store answers a read now (one single-row query; never raises)."""
        try:
            self.store.epoch()
        except Exception:  # health checks report, never raise
            return False
        return True

    def rotation_status(self, key_id: str) -> dict[str, Any] | None:
        """The provider's automatic-rotation facts of wrapping key ``key_id``.

        None when the provider keeps no such record (the local provider: the keyring's own
        versions are the rotation history).

        Raises:
            KmsError: The provider could not report it.
        """
        if not isinstance(self.provider, ReportsRotationStatus):
            return None
        return dict(self.provider.rotation_status(key_id))

    def generate_system_key(self, context: EncryptionContext) -> GeneratedDataKey:
        """A new key for the library's own use (the audit chain root).

        Wrapped by the provider under the primary version's wrapping key, bound to
        ``context``.
        """
        return self.provider.generate_data_key(self._primary.wrapping_key_id, context, KeyLimits())

    def unwrap_system_key(
        self, provider: str, key_id: str, wrapped: bytes, context: EncryptionContext
    ) -> DataKey:
        """Unwraps a key made by :meth:`generate_system_key`.

        Raises:
            DecryptionError: It was wrapped by another provider, or does not unwrap.
        """
        if provider != self.provider.name:
            raise DecryptionError()
        return self.provider.decrypt_data_key(key_id, wrapped, context, KeyLimits())

    # -- encryption ----------------------------------------------------------------------

    def _single_flight(self, cache_id: bytes) -> threading.Lock:
        return self._flights[hash(cache_id) % _FLIGHT_STRIPES]

    def _new_sealer(
        self, version: KeyVersion, ctx: EncryptionContext, reference: str
    ) -> EnvelopeSealer:
        if reference == "branch":
            # Derived in Rust from the scope's branch key: no KMS call unless the branch key
            # is not unwrapped in this process yet (once per TTL).
            return self._branches.sealer(version, ctx, self._limits)
        started = time.perf_counter()
        generated = self.provider.generate_data_key(version.wrapping_key_id, ctx, self._limits)
        self._emit(
            "key_cache_miss",
            operation="encrypt",
            data_class=ctx.data_class,
            key_version=version.version,
        )
        self._emit(
            "key_generated",
            key_version=version.version,
            key_id=generated.key_id,
            data_class=ctx.data_class,
            context_digest=ctx.digest.hex(),
            key_reference=reference,
            fingerprint=generated.key.fingerprint,
            seconds=time.perf_counter() - started,
        )
        if reference == "stored":
            # Commit the wrapped DEK before any ciphertext that names it can exist.
            dek_id = self.store.insert_dek(
                version.version,
                self.provider.name,
                generated.key_id,
                generated.wrapped,
                ctx.as_dict(),
                ctx.digest,
            )
            self._dec_cache.put(stored_key_ref_id(dek_id), generated.key, ctx.data_class)
            self._track_usage(dek_id, generated.key)
            return EnvelopeSealer(
                generated.key, key_version=version.version, context=ctx.canonical, dek_id=dek_id
            )
        return EnvelopeSealer(
            generated.key,
            key_version=version.version,
            context=ctx.canonical,
            provider=self.provider.name,
            key_id=generated.key_id,
            wrapped_dek=generated.wrapped,
            context_digest=True,
        )

    def _apply_fence(self, deadline_ns: int | None) -> None:
        """Moves every encryption cache's fence (called by the keyring on each confirmation)."""
        for cache in self._enc_caches.values():
            cache.set_fence(deadline_ns)

    def _check_fence(self) -> None:
        """Confirms the keyring view first when the fence has passed (the slow path only).

        Raises:
            KeyStoreUnavailableError: The key store cannot be reached, so this instance cannot
                know whether the version it would seal under has been retired meanwhile.
        """
        deadline = self._keyring.fence_deadline_ns
        if deadline is None or monotonic_ns() < deadline:
            return
        with self._fence_lock:
            deadline = self._keyring.fence_deadline_ns
            if deadline is None or monotonic_ns() < deadline:
                return  # another thread confirmed while this one waited
            if time.monotonic() < self._fence_retry_at:
                # Fail fast for a moment after a failed attempt: each attempt can wait for a
                # connection, and every writer thread would otherwise queue up behind it.
                raise KeyStoreUnavailableError(_UNCONFIRMED)
            try:
                confirmed = self._keyring.confirm()
            except KeyStoreUnavailableError as exc:
                self._fence_retry_at = time.monotonic() + 1.0
                raise KeyStoreUnavailableError(_UNCONFIRMED) from exc
            if not confirmed:
                raise KeyStoreUnavailableError(
                    "cannot encrypt: this instance's keyring could not be confirmed"
                )

    def _sealer(self, ctx: EncryptionContext, reference: str) -> tuple[DekCache, EnvelopeSealer]:
        self._check_fence()
        # Read the cache before the version: caches are replaced after the primary changes,
        # so a new cache always comes with the new version (see _replace_enc_caches).
        cache = self._enc_caches[reference]
        version = self._primary
        cache_id = ctx._canonical
        with self._single_flight(reference.encode() + b"|" + cache_id):
            hit = cache.get_with_age(cache_id)
            if hit is not None and hit[1] < self._refresh_after:
                sealer = hit[0]
                assert isinstance(sealer, EnvelopeSealer)
                return cache, sealer
            sealer = self._new_sealer(version, ctx, reference)
            cache.put(cache_id, sealer, ctx.data_class)
            return cache, sealer

    def _check_plaintext(self, plaintext: object) -> bytes:
        data = _as_bytes(plaintext, "plaintext")
        if len(data) > self.config.max_plaintext_bytes:
            raise PayloadTooLargeError(
                f"plaintext of {len(data)} bytes exceeds the maximum of "
                f"{self.config.max_plaintext_bytes}"
            )
        return data

    def encrypt(
        self,
        plaintext: bytes,
        context: ContextLike,
        *,
        associated_data: bytes | None = None,
        key_reference: str | None = None,
    ) -> bytes:
        """Encrypts ``plaintext`` under a DEK bound to ``context``.

        Args:
            plaintext: The data (bytes; bytearray and memoryview are copied first).
            context: Tenant and data class (plus extra pairs); required again to decrypt.
            associated_data: Optional binding to a location (table, column, row id).
            key_reference: ``stored`` or ``inline``; default from the configuration.

        Returns:
            A self-describing envelope.

        Raises:
            TypeError: ``plaintext`` is not bytes-like.
            PayloadTooLargeError: Above ``max_plaintext_bytes`` (before any KMS call).
            InvalidContextError: The context is invalid.
            KmsError: The provider failed (typed by cause).
        """
        # The hot path avoids helper calls: at 64 bytes, each Python call is a measurable share
        # of the whole operation (see benches/gate_service.py).
        data = plaintext if type(plaintext) is bytes else self._check_plaintext(plaintext)
        if len(data) > self._max_plaintext:
            self._check_plaintext(data)
        ctx = context if type(context) is EncryptionContext else _as_context(context)
        aad = associated_data if associated_data is None else _aad(associated_data)
        if key_reference is None:
            reference = self._default_reference
            out = self._enc_cache.seal(ctx._canonical, data, aad, self._refresh_after)
        else:
            if key_reference not in _REFERENCES:
                raise InvalidArgumentError("key_reference must be 'stored', 'inline' or 'branch'")
            reference = key_reference
            out = self._enc_caches[reference].seal(ctx._canonical, data, aad, self._refresh_after)
        if out is None:
            out = self._encrypt_slow(ctx, reference, data, aad)
        if self._per_op:
            self._emit("encryption_performed", data_class=ctx.data_class, size=len(data))
        return out

    def _encrypt_slow(
        self, ctx: EncryptionContext, reference: str, data: bytes, aad: bytes | None
    ) -> bytes:
        try:
            for _ in range(3):
                cache, _sealer = self._sealer(ctx, reference)
                out = cache.seal(ctx._canonical, data, aad)
                if out is not None:
                    return out
                # A miss right after _sealer: the DEK's budget ran out, or the cache was
                # replaced or fenced meanwhile. Go round again (the fence is re-checked).
            # Three fresh keys in a row were spent by other threads; report, do not spin.
            raise KeyStateError("could not obtain a data key with budget left")
        except GreenlangCryptoError as exc:
            self._failed("encryption_failed", "encrypt", exc, ctx)
            raise

    def encrypt_str(self, plaintext: str, context: ContextLike, **kwargs: Any) -> bytes:
        """Encrypts the UTF-8 encoding of ``plaintext``.

        Raises:
            InvalidArgumentError: The string holds a lone surrogate (not encodable as UTF-8).
        """
        if not isinstance(plaintext, str):
            raise TypeError("plaintext must be str")
        try:
            data = plaintext.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError("plaintext is not valid Unicode (lone surrogate)") from None
        return self.encrypt(data, context, **kwargs)

    def encrypt_batch(
        self,
        plaintexts: Sequence[bytes],
        context: ContextLike,
        *,
        associated_data: Sequence[bytes | None] | None = None,
        key_reference: str | None = None,
    ) -> list[bytes]:
        """Encrypts many values under one context: one provider call at most, one Rust call."""
        values = [self._check_plaintext(p) for p in plaintexts]
        if not values:
            return []
        ctx = _as_context(context)
        reference = key_reference or self.config.key_reference
        aads = list(associated_data) if associated_data is not None else None
        if aads is not None and len(aads) != len(values):
            raise InvalidArgumentError("associated_data must have one entry per plaintext")
        if reference not in _REFERENCES:
            raise InvalidArgumentError("key_reference must be 'stored', 'inline' or 'branch'")
        if len(values) > self._limits.max_messages:
            raise KeyStateError("batch is larger than one data key's message budget")
        cache, sealer = self._sealer(ctx, reference)
        try:
            # seal_batch reserves the whole batch's budget in one atomic step (Rust), so a
            # concurrent writer can never take part of it between a check and the seals.
            return sealer.seal_batch(values, aads)
        except KeyUsageExceededError:
            pass
        # The cached DEK has less budget left than the batch needs: the batch gets a fresh DEK
        # of its own and seals before any other writer can see that DEK, so its whole budget
        # is free. The DEK then replaces the cached one for later writers when it has more
        # budget left (another thread may have put a fresher one meanwhile).
        fresh = self._new_sealer(self._primary, ctx, reference)
        out = fresh.seal_batch(values, aads)
        with self._single_flight(reference.encode() + b"|" + ctx._canonical):
            current = cache.get(ctx._canonical)
            left = fresh.key.max_messages - fresh.key.messages_used
            if not isinstance(current, EnvelopeSealer) or (
                current.key.max_messages - current.key.messages_used < left
            ):
                cache.put(ctx._canonical, fresh, ctx.data_class)
        return out

    async def encrypt_async(self, plaintext: bytes, context: ContextLike, **kwargs: Any) -> bytes:
        """:meth:`encrypt` on a worker thread, so KMS calls never block the event loop."""
        return await asyncio.to_thread(self.encrypt, plaintext, context, **kwargs)

    # -- decryption ----------------------------------------------------------------------

    def _check_version(self, key_version: int) -> None:
        if key_version not in self._versions:
            # Another instance may have rotated before this one's next refresh: check the
            # change counter once (a single-row read) before reporting.
            self._keyring.refresh()
            if key_version not in self._versions:
                raise KeyVersionUnavailableError(key_version)
        if key_version < self._min_version:
            raise KeyRetiredError(key_version, self._min_version)

    def _cache_decryption_key(
        self, ref_id: bytes, key: DataKey, key_version: int, data_class: str
    ) -> None:
        # Checked under the lock that retirement raises the minimum under, so a key fetched
        # by a decrypt that started before a retirement never lands in the cache after it.
        with self._state_lock:
            if key_version < self._min_version:
                raise KeyRetiredError(key_version, self._min_version)
            self._dec_cache.put(ref_id, key, data_class)

    def _data_key_for(self, envelope: bytes, ctx: EncryptionContext) -> DataKey:
        header = parse_envelope(envelope)
        self._check_version(header.key_version)
        if header.kind == "branch":
            return self._branch_data_key(header, envelope, ctx)
        ref_id = header.key_ref_id
        with self._single_flight(b"dec|" + ref_id):
            cached = self._dec_cache.get(ref_id)
            if isinstance(cached, DataKey):
                return cached
            if header.kind == "stored":
                assert header.dek_id is not None
                if header.dek_id >= _MAX_DEK_ID:
                    # No stored DEK has such an id; the header is forged or corrupt.
                    raise KeyNotFoundError("stored DEK is not in the key store")
                record = self._stored_dek(header.dek_id)
                if record is None:
                    raise KeyNotFoundError(f"stored DEK {header.dek_id} is not in the key store")
                if record.key_version != header.key_version or record.provider != (
                    self.provider.name
                ):
                    raise DecryptionError()
                key = self.provider.decrypt_data_key(
                    record.wrapping_key_id, record.wrapped, ctx, self._limits
                )
            else:
                assert header.key_id is not None and header.wrapped_dek is not None
                # Only wrapping keys of this keyring are used, so an envelope cannot make the
                # service call an arbitrary KMS key.
                # Every wrapping key a version ever had counts (until an operator destroys
                # it), so inline envelopes made before a rewrap keep decrypting.
                known = (header.provider, header.key_id) in self._wrapping_keys or (
                    header.key_id in self.config.kms_key_ids
                )
                # The AWS provider enforces its own allow-list before any request, and it also
                # knows which key ARNs an alias has resolved to (an alias re-pointed to a new
                # key yields envelopes naming that key's ARN).
                delegated = (
                    isinstance(self.provider, EnforcesKeyAllowList)
                    and self.provider.enforces_key_allow_list
                )
                if header.provider != self.provider.name or not (known or delegated):
                    raise DecryptionError()
                try:
                    key = self.provider.decrypt_data_key(
                        header.key_id, header.wrapped_dek, ctx, self._limits
                    )
                except KmsAccessDeniedError as exc:
                    if known or exc.code != "KeyNotAllowed":
                        raise
                    # The provider refused, before any request, a key id that only the
                    # envelope names: a forged or foreign envelope, reported like any other.
                    raise DecryptionError() from None
            self._cache_decryption_key(ref_id, key, header.key_version, ctx.data_class)
            self._emit(
                "key_cache_miss",
                operation="decrypt",
                data_class=ctx.data_class,
                key_version=header.key_version,
            )
            self._emit(
                "key_accessed",
                key_version=header.key_version,
                key_reference=header.kind,
                dek_id=header.dek_id,
                data_class=ctx.data_class,
                context_digest=ctx.digest.hex(),
                fingerprint=key.fingerprint,
            )
            return key

    def _stored_dek(self, dek_id: int) -> DekRecord | None:
        """A stored DEK row, from the shared Redis key cache when one is configured."""
        cache = self._branches.shared_cache
        if cache is None:
            return self.store.get_dek(dek_id)
        from greenlang_crypto.redis_cache import dek_record_from_json, dek_record_to_json

        epoch = self._keyring.snapshot.epoch
        record = dek_record_from_json(cache.get(f"dek:{dek_id}", epoch))
        if record is None:
            record = self.store.get_dek(dek_id)
            if record is not None:
                cache.put(f"dek:{dek_id}", dek_record_to_json(record), epoch)
        return record

    def _branch_data_key(
        self, header: EnvelopeHeader, envelope: bytes, ctx: EncryptionContext
    ) -> DataKey:
        # The cache id covers the context: the derived DEK depends on it.
        ref_id = dek_cache_id(envelope, ctx.canonical)
        with self._single_flight(b"dec|" + ref_id):
            cached = self._dec_cache.get(ref_id)
            if isinstance(cached, DataKey):
                return cached
            key = self._branches.data_key(header, envelope, ctx, self._limits, self.provider.name)
            self._cache_decryption_key(ref_id, key, header.key_version, ctx.data_class)
            return key

    def decrypt(
        self,
        ciphertext: bytes,
        context: ContextLike,
        *,
        associated_data: bytes | None = None,
    ) -> bytes:
        """Decrypts an envelope made by :meth:`encrypt` with the same context and binding.

        Raises:
            DecryptionError: Any authentication failure (opaque), or a malformed envelope.
            KeyVersionUnavailableError: The envelope's key version is not in the keyring.
            KeyRetiredError: The key version is below the minimum decryption version.
            KmsError: The provider failed (typed by cause).
        """
        envelope = ciphertext if type(ciphertext) is bytes else _as_bytes(ciphertext, "ciphertext")
        ctx = context if type(context) is EncryptionContext else _as_context(context)
        aad = associated_data if associated_data is None else _aad(associated_data)
        try:
            out = self._dec_cache.open(envelope, ctx._canonical, aad)
            if out is None:
                key = self._data_key_for(envelope, ctx)
                out = open_envelope(key, envelope, ctx._canonical, aad)
                self._slow_counts[("decrypt", ctx.data_class)] += 1
        except DecryptionError as exc:
            self._failed("decryption_failed", "decrypt", exc, ctx)
            # Report a missing or retired key version as such, not as tampering: the version
            # comes from the public header, so naming it is no decryption oracle.
            if not isinstance(exc, InvalidEnvelopeError):
                self._check_version(parse_envelope(envelope).key_version)
            raise
        except GreenlangCryptoError as exc:
            self._failed("decryption_failed", "decrypt", exc, ctx)
            raise
        if self._per_op:
            self._emit("decryption_performed", data_class=ctx.data_class, size=len(out))
        return out

    def decrypt_str(self, ciphertext: bytes, context: ContextLike, **kwargs: Any) -> str:
        """Decrypts to a str (the plaintext must be UTF-8)."""
        data = self.decrypt(ciphertext, context, **kwargs)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("plaintext is not UTF-8") from None

    def decrypt_batch(
        self,
        ciphertexts: Sequence[bytes],
        context: ContextLike,
        *,
        associated_data: Sequence[bytes | None] | None = None,
    ) -> list[bytes]:
        """Decrypts many envelopes under one context."""
        aads = list(associated_data) if associated_data is not None else [None] * len(ciphertexts)
        if len(aads) != len(ciphertexts):
            raise InvalidArgumentError("associated_data must have one entry per ciphertext")
        ctx = _as_context(context)
        return [
            self.decrypt(c, ctx, associated_data=a) for c, a in zip(ciphertexts, aads, strict=True)
        ]

    def value_decryptor(
        self,
        context: ContextLike,
        *,
        associated_data: bytes | None = None,
        text: bool = False,
        fallback: Callable[[Any], Any] | None = None,
    ) -> Callable[[Any], Any]:
        """A callable that decrypts one stored value under a fixed context and binding.

        Made for database result processing (one call per row): ``None`` stays ``None``; a
        value whose DEK is cached is opened (and UTF-8 decoded when ``text``) in a single Rust
        call; anything else goes to ``fallback`` (default: :meth:`decrypt`, with its errors and
        accounting), which must return what the fast path would.
        """
        ctx = _as_context(context)
        aad = _aad(associated_data)

        def decrypt_one(value: Any) -> Any:
            data = self.decrypt(value, ctx, associated_data=aad)
            if not text:
                return data
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise DecryptionError("plaintext is not UTF-8") from None

        opener = CachedOpener(self._dec_cache, ctx.canonical, aad, fallback or decrypt_one, text)
        # The bound method, not the object: it is called through vectorcall, without the
        # argument tuple a __call__ needs per value.
        return opener.open

    def value_encryptor(
        self,
        context: ContextLike,
        *,
        associated_data: bytes | None = None,
        text: bool = False,
        fallback: Callable[[Any], Any] | None = None,
    ) -> Callable[[Any], Any]:
        """A callable that encrypts one value under a fixed context and binding.

        The counterpart of :meth:`value_decryptor`, for database parameters: ``None`` stays
        ``None``; a ``str`` (``text``) or ``bytes`` value whose sealer is cached is sealed in a
        single Rust call, through the current encryption cache; anything else goes to
        ``fallback`` (default: :meth:`encrypt`, ``text`` values as UTF-8, with its errors and
        accounting).
        """
        ctx = _as_context(context)
        aad = _aad(associated_data)

        def encrypt_one(value: Any) -> Any:
            if value is None:
                return None
            if text:
                return self.encrypt_str(value, ctx, associated_data=aad)
            return self.encrypt(value, ctx, associated_data=aad)

        if fallback is None:
            fallback = encrypt_one

        if self._per_op or self._default_reference not in self._enc_caches:
            # Per-operation events are emitted by encrypt() itself.
            return fallback
        sealer = CachedSealer(
            self,
            "_enc_cache",
            ctx.canonical,
            aad,
            fallback,
            text=text,
            max_age=self._refresh_after,
            max_plaintext=self._max_plaintext,
        )
        # The bound method, as for value_decryptor: no argument tuple per value.
        return sealer.seal

    async def decrypt_async(self, ciphertext: bytes, context: ContextLike, **kwargs: Any) -> bytes:
        """:meth:`decrypt` on a worker thread."""
        return await asyncio.to_thread(self.decrypt, ciphertext, context, **kwargs)

    # -- streams (large objects; the I/O lives in greenlang_crypto.streams) ---------------

    def _count_stream(self, operation: str, ctx: EncryptionContext, nbytes: int) -> None:
        # Once per stream, never per segment: streams add no cost to the hot path. An
        # encrypted stream's operation is already counted in Rust (it reserves one message of
        # its cached DEK, which the cache counts by data class); only its bytes are added here.
        with self._state_lock:
            slot = self._stream_counts.setdefault((operation, ctx.data_class), [0, 0])
            slot[0] += operation != "encrypt"
            slot[1] += nbytes
        if self._per_op:
            name = EncryptionPerformed.name if operation == "encrypt" else DecryptionPerformed.name
            self._emit(name, data_class=ctx.data_class, size=nbytes)

    def _stream_encryptor(
        self, ctx: EncryptionContext, aad: bytes, segment_size: int, key_reference: str | None
    ) -> StreamEncryptor:
        # A stream carries one DEK for all its segments, so a branch-derived key saves nothing:
        # a service whose envelopes use branch keys gives its streams a stored DEK.
        reference = key_reference or (
            "stored" if self._default_reference == "branch" else self._default_reference
        )
        if reference not in ("stored", "inline"):
            raise InvalidArgumentError("a stream's key_reference must be 'stored' or 'inline'")
        if not STREAM_MIN_SEGMENT <= segment_size <= STREAM_MAX_SEGMENT:
            raise InvalidArgumentError("segment_size must be in 65536..16777216")
        try:
            for _ in range(3):
                _cache, sealer = self._sealer(ctx, reference)
                try:
                    # The stream reserves one message of the cached DEK's budget.
                    return StreamEncryptor(
                        sealer.key, sealer.header, ctx._canonical, aad, segment_size=segment_size
                    )
                except KeyUsageExceededError:
                    fresh = self._new_sealer(self._primary, ctx, reference)
                    with self._single_flight(reference.encode() + b"|" + ctx._canonical):
                        self._enc_caches[reference].put(ctx._canonical, fresh, ctx.data_class)
            raise KeyStateError("could not obtain a data key with budget left")
        except GreenlangCryptoError as exc:
            self._failed("encryption_failed", "encrypt", exc, ctx)
            raise

    def _stream_decryptor(
        self, header: bytes, ctx: EncryptionContext, aad: bytes
    ) -> StreamDecryptor:
        try:
            key = self._data_key_for(parse_stream_header(header).key_envelope, ctx)
            return StreamDecryptor(key, header, ctx._canonical, aad)
        except GreenlangCryptoError as exc:
            self._failed("decryption_failed", "decrypt", exc, ctx)
            raise

    def encrypt_stream(
        self,
        src: Any,
        dst: Any,
        context: ContextLike,
        associated_data: bytes | None = b"",
        *,
        segment_size: int = STREAM_DEFAULT_SEGMENT,
        key_reference: str | None = None,
        threads: int = 1,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Encrypts ``src`` into ``dst`` as a stream (docs/FORMAT.md, "Stream format v1").

        Memory stays constant (a few segments) whatever the size. One DEK per stream, from
        the same cache and providers as :meth:`encrypt`; ``max_plaintext_bytes`` does not
        apply, ``stream_max_bytes`` does.

        Args:
            src: A binary file object (anything with ``readinto`` or ``read``) or an iterable
                of bytes chunks.
            dst: A binary file object (anything with ``write``).
            context: Tenant and data class; required again to decrypt.
            associated_data: A binding (for example an object's location), required again.
            segment_size: Plaintext bytes per segment, 64 KiB to 16 MiB.
            key_reference: ``stored`` or ``inline``; default from the configuration.
            threads: Threads sealing the segments of one run in parallel.
            progress: Called with the plaintext bytes of each run as it is written.

        Returns:
            The plaintext bytes encrypted.

        Raises:
            PayloadTooLargeError: The source passed ``stream_max_bytes`` (a regular file is
                refused before any KMS call; otherwise ``dst`` holds an incomplete stream,
                which never decrypts).
            InvalidArgumentError: A bad segment size, key reference or thread count.
            KmsError: The provider failed (typed by cause).
        """
        ctx = _as_context(context)
        aad = _aad(associated_data) or b""
        limit = self.config.stream_max_bytes
        known = _streams.regular_file_size(src)
        if known is not None and known > limit:
            raise PayloadTooLargeError(f"input is {known} bytes, more than {limit}")
        enc = self._stream_encryptor(ctx, aad, segment_size, key_reference)
        try:
            n = _streams.encrypt_to(
                enc, src, dst, max_bytes=limit, threads=threads, progress=progress
            )
        except GreenlangCryptoError as exc:
            self._failed("encryption_failed", "encrypt", exc, ctx)
            raise
        self._count_stream("encrypt", ctx, n)
        return n

    def open_decrypting(
        self,
        src: Any,
        context: ContextLike,
        associated_data: bytes | None = b"",
        *,
        threads: int = 1,
        close_source: bool = False,
    ) -> _streams.DecryptingReader:
        """Opens a stream for reading its plaintext: a read-only ``io.RawIOBase``.

        The header is read and verified here (the DEK comes from the cache or the provider).
        The reader is seekable when ``src`` is, and then any byte range opens only the
        segments that cover it. It never returns plaintext that did not authenticate.

        Raises:
            DecryptionError: The header does not verify under this context and binding, or
                is malformed (opaque).
            KeyVersionUnavailableError: The stream's key version is not in the keyring.
            KeyRetiredError: The key version is below the minimum decryption version.
        """
        ctx = _as_context(context)
        aad = _aad(associated_data) or b""
        reader = _streams.as_reader(src)
        seekable = bool(getattr(reader, "seekable", lambda: False)())
        start = reader.tell() if seekable else 0  # type: ignore[attr-defined]
        try:
            header = _streams.read_header(reader)
        except GreenlangCryptoError as exc:
            self._failed("decryption_failed", "decrypt", exc, ctx)
            raise
        dec = self._stream_decryptor(header, ctx, aad)
        return _streams.DecryptingReader(
            reader,
            dec,
            start=start,
            on_close=lambda n: self._count_stream("decrypt", ctx, n),
            on_failure=lambda exc: self._failed("decryption_failed", "decrypt", exc, ctx),
            close_source=close_source,
            threads=threads,
        )

    def decrypt_stream(
        self,
        src: Any,
        dst: Any,
        context: ContextLike,
        associated_data: bytes | None = b"",
        *,
        start: int = 0,
        end: int | None = None,
        threads: int = 1,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Decrypts the plaintext bytes ``[start, end)`` of a stream into ``dst``.

        Returns:
            The plaintext bytes written.

        Raises:
            DecryptionError: As :meth:`open_decrypting`, or a segment fails (what was written
                before it authenticated; use :meth:`decrypt_file` for all-or-nothing).
        """
        with self.open_decrypting(src, context, associated_data, threads=threads) as reader:
            return _streams.decrypt_to(reader, dst, start=start, end=end, progress=progress)

    def encrypt_file(
        self,
        src_path: str | os.PathLike[str],
        dst_path: str | os.PathLike[str],
        context: ContextLike,
        associated_data: bytes | None = b"",
        **kwargs: Any,
    ) -> int:
        """Encrypts a file into a stream file written atomically.

        The output is a temporary file (mode 0600) renamed into place only when complete.
        Keyword arguments as :meth:`encrypt_stream`.
        """
        with open(src_path, "rb", buffering=0) as src, _streams.atomic_output(dst_path) as dst:
            return self.encrypt_stream(src, dst, context, associated_data, **kwargs)

    def decrypt_file(
        self,
        src_path: str | os.PathLike[str],
        dst_path: str | os.PathLike[str],
        context: ContextLike,
        associated_data: bytes | None = b"",
        **kwargs: Any,
    ) -> int:
        """Decrypts a stream file into a file written atomically (mode 0600).

        On any failure nothing is left at ``dst_path``. Keyword arguments as
        :meth:`decrypt_stream`.
        """
        with open(src_path, "rb", buffering=0) as src, _streams.atomic_output(dst_path) as dst:
            return self.decrypt_stream(src, dst, context, associated_data, **kwargs)

    async def encrypt_stream_async(self, *args: Any, **kwargs: Any) -> int:
        """:meth:`encrypt_stream` on a worker thread (the event loop never blocks)."""
        return await asyncio.to_thread(self.encrypt_stream, *args, **kwargs)

    async def decrypt_stream_async(self, *args: Any, **kwargs: Any) -> int:
        """:meth:`decrypt_stream` on a worker thread."""
        return await asyncio.to_thread(self.decrypt_stream, *args, **kwargs)

    async def encrypt_file_async(self, *args: Any, **kwargs: Any) -> int:
        """:meth:`encrypt_file` on a worker thread."""
        return await asyncio.to_thread(self.encrypt_file, *args, **kwargs)

    async def decrypt_file_async(self, *args: Any, **kwargs: Any) -> int:
        """:meth:`decrypt_file` on a worker thread."""
        return await asyncio.to_thread(self.decrypt_file, *args, **kwargs)

    def reencrypt(
        self,
        ciphertext: bytes,
        context: ContextLike,
        *,
        associated_data: bytes | None = None,
    ) -> bytes:
        """Re-encrypts an envelope under the primary version; the plaintext never leaves."""
        plaintext = self.decrypt(ciphertext, context, associated_data=associated_data)
        return self.encrypt(plaintext, context, associated_data=associated_data)

    # -- keys ----------------------------------------------------------------------------

    @contextmanager
    def _key_change(self, action: str, **details: object) -> Iterator[None]:
        """Runs one key-state change inside the context of every :class:`KeyChangeGuard`.

        A guard (the audit log) records the intent on entry and raises when it cannot, so the
        change never happens unrecorded; on exit it records the outcome. Without guards this
        is a no-op.
        """
        with ExitStack() as stack:
            for observer in self._observers:
                if isinstance(observer, KeyChangeGuard):
                    stack.enter_context(observer.key_change(action, details))
            yield

    @property
    def primary_version(self) -> int:
        """The key version new encryptions use."""
        return self._primary.version

    @property
    def min_decryption_version(self) -> int:
        """Versions below this refuse to decrypt (only ever rises)."""
        return self._min_version

    @property
    def keyring_epoch(self) -> int:
        """The key store change counter this instance has loaded."""
        return self._keyring.snapshot.epoch

    @property
    def instance_id(self) -> str:
        """This instance's id in the key store's instance table."""
        return self._keyring.instance_id

    def refresh_keyring(self) -> bool:
        """Loads key changes made elsewhere now, instead of at the next background refresh.

        Returns whether anything changed.
        """
        return self._keyring.refresh()

    def instances(self) -> list[InstanceRecord]:
        """Instances registered in the key store (live or not), most recently seen first."""
        return self.store.instances()

    def live_instances(self) -> list[InstanceRecord]:
        """Instances whose last heartbeat is within the liveness window."""
        return self._keyring.live_instances()

    def versions(self) -> list[KeyVersion]:
        """All key versions (re-read from the key store)."""
        self._load_keyring()
        return list(self._versions.values())

    def stored_dek_count(self) -> int:
        """How many stored DEKs the key store holds (all versions)."""
        return sum(self.store.count_deks_by_version().values())

    def can_create_wrapping_key(self) -> bool:
        """Whether the provider can create a wrapping key by itself (the local provider)."""
        return isinstance(self.provider, CreatesMasterKeys)

    def create_wrapping_key(self) -> str:
        """Creates a new wrapping key at the provider (local provider) and returns its id.

        Raises:
            KeyStateError: The provider cannot create wrapping keys (use a KMS key id).
        """
        if not isinstance(self.provider, CreatesMasterKeys):
            raise KeyStateError("this provider cannot create wrapping keys; name one")
        return str(self.provider.create_master_key())

    def rotate(
        self, *, new_wrapping_key_id: str | None = None, rotate_kms_key: bool = False
    ) -> RotationResult:
        """Makes version N+1 primary; older versions keep decrypting (dual-key window).

        With the local provider a new master key is created unless one is given. With AWS
        KMS the new version uses ``new_wrapping_key_id`` or the same CMK; with
        ``rotate_kms_key`` KMS also rotates that CMK's key material on demand first. Every
        instance encrypts under the new version within ``keyring_refresh_seconds``.
        """
        with self._key_change(
            "key_rotate",
            old_version=self._primary.version,
            wrapping_key_id=new_wrapping_key_id,
            rotate_kms_key=rotate_kms_key,
        ):
            self._load_keyring()
            old = self._primary.version
            if rotate_kms_key:
                # On-demand rotation of the CMK's key material; old material keeps decrypting.
                if not isinstance(self.provider, RotatesKeyOnDemand):
                    raise KeyStateError("this provider has no on-demand key rotation")
                self.provider.rotate_key_on_demand(self._primary.wrapping_key_id)
            wrapping = new_wrapping_key_id
            if wrapping is None:
                wrapping = (
                    str(self.provider.create_master_key())
                    if isinstance(self.provider, CreatesMasterKeys)
                    else self._primary.wrapping_key_id
                )
            new = self.store.add_primary_version(self.provider.name, wrapping)
            self._load_keyring()
        self._emit(
            "key_rotated",
            old_version=old,
            new_version=new.version,
            key_id=wrapping,
            kms_on_demand=rotate_kms_key,
        )
        return RotationResult(old, new.version, wrapping)

    def rewrap(self, new_wrapping_key_id: str, *, progress: Any = None) -> int:
        """Rewraps every stored DEK under ``new_wrapping_key_id`` without touching data.

        Each row is replaced by compare-and-swap, so concurrent rewraps never lose an update.
        The previous wrapping keys stay in the keyring's history: inline envelopes that name
        them keep decrypting until an operator destroys them (:meth:`destroy_wrapping_key`).
        Returns the number of rows rewrapped.
        """
        with self._key_change("key_rewrap", wrapping_key_id=new_wrapping_key_id):
            done = 0
            for batch in self.store.iter_deks():
                for record in batch:
                    if record.wrapping_key_id == new_wrapping_key_id:
                        continue
                    ctx = EncryptionContext.from_mapping(record.context)
                    new_blob = self.provider.reencrypt_data_key(
                        record.wrapping_key_id, record.wrapped, new_wrapping_key_id, ctx
                    )
                    if self.store.replace_wrapped(
                        record.dek_id, record.wrapped, new_blob, new_wrapping_key_id
                    ):
                        done += 1
                    if progress is not None:
                        progress(1)
            for index_record in self.store.index_keys():
                if index_record.wrapping_key_id == new_wrapping_key_id:
                    continue
                new_blob = self.provider.reencrypt_data_key(
                    index_record.wrapping_key_id,
                    index_record.wrapped,
                    new_wrapping_key_id,
                    INDEX_ROOT_CONTEXT,
                )
                self.store.replace_index_wrapped(
                    index_record.version, index_record.wrapped, new_blob, new_wrapping_key_id
                )
            done += self._rewrap_branch_keys(new_wrapping_key_id)
            for version in self.store.versions():
                if version.provider == self.provider.name:
                    self.store.set_wrapping_key(version.version, new_wrapping_key_id)
            self._load_keyring()
            self._await_fleet(self._keyring.snapshot.epoch)
        self._emit("key_rewrapped", key_id=new_wrapping_key_id, count=done)
        return done

    def _rewrap_branch_keys(self, new_wrapping_key_id: str) -> int:
        from greenlang_crypto.keys.branch import branch_key_context

        done = 0
        for batch in self._branches.rows.iter_all():
            for record in batch:
                if record.wrapping_key_id == new_wrapping_key_id:
                    continue
                new_blob = self.provider.reencrypt_data_key(
                    record.wrapping_key_id,
                    record.wrapped,
                    new_wrapping_key_id,
                    branch_key_context(record.scope, record.branch_id),
                )
                if self._branches.rows.replace_wrapped(
                    record.branch_id, record.wrapped, new_blob, new_wrapping_key_id
                ):
                    done += 1
        if done:
            self._branches.rows.rewrapped()
        return done

    # -- branch keys ------------------------------------------------------------------------

    def branch_scope(self, context: ContextLike) -> str:
        """The branch-key scope a context maps to (``service``, ``tenant:<id>``, ...)."""
        return self._branches.scope_of(_as_context(context))

    def rotate_branch_key(self, scope: str) -> int:
        """Makes a new branch key active for ``scope``; returns its id.

        Envelopes made under older branch keys of the scope keep decrypting. Every instance
        derives new DEKs from the new key within ``keyring_refresh_seconds``.
        """
        with self._key_change("branch_key_rotate", scope=scope):
            record = self._branches.rotate(scope, self._primary)
            self._load_keyring()
        self._emit(
            "key_rotated",
            purpose="branch-key",
            branch_id=record.branch_id,
            new_version=record.branch_version,
        )
        return record.branch_id

    def delete_branch_keys(self, scope: str) -> int:
        """Deletes every branch key of ``scope``: its data can never be decrypted again.

        With per-tenant scopes (``tenant:<id>``) this crypto-shreds one tenant and leaves
        everyone else's data untouched. Every instance drops the keys (and the DEKs derived
        from them) within ``keyring_refresh_seconds``; an encryption for the scope afterwards
        creates a new branch key. Returns the number of branch keys deleted.
        """
        with self._key_change("branch_key_delete", scope=scope):
            ids = self._branches.delete_scope(scope)
            self._load_keyring()
            # Return only once no instance can still seal under the deleted keys: every live
            # one has loaded the deletion, or has been silent past its fence.
            self._await_fleet(self._keyring.snapshot.epoch)
        self._emit("key_retired", purpose="branch-key", count=len(ids))
        return len(ids)

    def branch_key_stats(self) -> dict[str, int]:
        """Branch-key counters: unwraps, created, store_reads, derivations, cached_keys."""
        return self._branches.stats()

    def key_cache_stats(self) -> dict[str, int]:
        """Outcomes of the shared Redis key cache (empty when none is configured)."""
        cache = self._branches.shared_cache
        return {} if cache is None else cache.stats()

    def destroy_wrapping_key(self, wrapping_key_id: str) -> int:
        """Removes a former wrapping key from the keyring's history.

        Inline envelopes whose DEK is wrapped under it stop decrypting (in every instance
        within the refresh bound). Returns the number of history rows marked destroyed.

        Raises:
            KeyStateError: A version, stored DEK or index key still uses the key.
        """
        with self._key_change("key_destroy", wrapping_key_id=wrapping_key_id):
            # An instance that has not loaded the rewrap yet may still make inline envelopes
            # under the old wrapping key: wait until none can before destroying it.
            self._load_keyring()
            self._await_fleet(self._keyring.snapshot.epoch)
            marked = self.store.destroy_wrapping_key(wrapping_key_id)
            self._load_keyring()
        self._emit("key_retired", purpose="wrapping-key", key_id=wrapping_key_id)
        return marked

    def _await_fleet(self, epoch: int) -> None:
        """Waits until no other instance can still act on a keyring view older than ``epoch``.

        An instance counts once it has confirmed ``epoch`` (or later), or once it has been
        silent past its liveness window, which is longer than its fence: from then on it
        cannot seal before confirming, and a confirmation loads the current view. So the wait
        always ends, within the longest window among the registered instances.
        """
        me = self._keyring.instance_id
        while True:
            laggards = [
                i for i in self._keyring.live_instances() if i.instance_id != me and i.epoch < epoch
            ]
            if not laggards:
                return
            time.sleep(0.05)

    def retirement_blockers(self, min_version: int) -> list[str]:
        """Why retiring versions below ``min_version`` is unsafe now (empty: it is safe).

        Lists live instances that still encrypt under a version below it (they have not
        loaded the rotation yet) and unfinished re-encryption job ranges.
        """
        self._load_keyring()
        ranges = self.store.unfinished_job_ranges()
        jobs = [f"{ranges} re-encryption job range(s) are not done"] if ranges else []
        return self._instance_blockers(min_version) + jobs

    def _instance_blockers(self, min_version: int) -> list[str]:
        return [
            f"instance {i.host}:{i.pid} ({i.instance_id[:8]}) still encrypts under "
            f"v{i.primary_version} (epoch {i.epoch})"
            for i in self._keyring.live_instances()
            if i.instance_id != self._keyring.instance_id and i.primary_version < min_version
        ]

    def retire_versions_below(
        self,
        min_version: int,
        *,
        delete_stored_deks: bool = False,
        force: bool = False,
        wait_seconds: float | None = None,
    ) -> None:
        """Raises the minimum decryption version (it never goes down).

        Refused while a live instance still encrypts under a version below ``min_version``
        (after waiting up to ``wait_seconds``, default the refresh bound plus one second, for
        instances to load a recent rotation) or re-encryption job ranges are unfinished
        (``force`` overrides both, and the guards record it), and while stored DEKs of older
        versions exist unless ``delete_stored_deks`` is set, which an operator does only after
        a re-encryption dry run counted 0 rows under those versions.

        Raises:
            KeyStateError: The retirement is unsafe (see above).
        """
        if wait_seconds is None:
            wait_seconds = self.config.keyring_refresh_seconds + 1.0
        with self._key_change(
            "key_retire",
            min_version=min_version,
            delete_stored_deks=delete_stored_deks,
            force=force,
        ):
            self._load_keyring()
            if min_version <= self._min_version:
                return  # the minimum only ever rises
            if min_version > self._primary.version:
                raise KeyStateError("cannot retire the primary key version")
            if not force:
                # Instances converge on their own within the refresh bound: give them that
                # long. Unfinished jobs take longer; they are refused at once.
                deadline = time.monotonic() + wait_seconds
                while self._instance_blockers(min_version) and time.monotonic() < deadline:
                    time.sleep(0.05)
                blockers = self.retirement_blockers(min_version)
                if blockers:
                    raise KeyStateError(
                        f"retiring versions below {min_version} is unsafe now: "
                        + "; ".join(blockers)
                    )
            counts = Counter(self.store.count_deks_by_version())
            # Branch keys of retired versions go with their stored DEKs.
            counts.update(self._branches.rows.count_by_version())
            remaining = sum(n for v, n in counts.items() if v < min_version)
            if remaining and not delete_stored_deks:
                raise KeyStateError(
                    f"{remaining} stored DEK(s) still belong to versions below {min_version}"
                )
            # Raise the minimum first, then delete: a decrypt racing the deletion is refused
            # as retired rather than reported as a missing DEK.
            self.store.retire_below(min_version)
            self._load_keyring()
            if remaining:
                self.store.delete_deks_below(min_version)
                self._branches.rows.delete_below(min_version)
                self._load_keyring()
        self._emit("key_retired", min_version=min_version, deleted_stored_deks=remaining)

    # -- blind-index keys ---------------------------------------------------------------

    def _unwrap_index_root(self, record: IndexKeyRecord) -> DataKey:
        return self.provider.decrypt_data_key(
            record.wrapping_key_id, record.wrapped, INDEX_ROOT_CONTEXT, KeyLimits()
        )

    def _index_records(self) -> tuple[IndexKeyRecord, ...]:
        records = self._keyring.snapshot.index_keys
        if not records:
            self.rotate_index_key()
            records = self._keyring.snapshot.index_keys
        return records

    def index_key_versions(self) -> list[tuple[int, str]]:
        """Index key versions and states; creates version 1 on first use."""
        return [(r.version, r.state) for r in self._index_records()]

    def rotate_index_key(self) -> int:
        """Adds a new primary blind-index root key.

        Older versions keep serving lookups until they are retired (the dual-index window of
        a rotation).
        """
        with self._key_change("index_key_rotate"):
            wrapping = self._primary.wrapping_key_id
            generated = self.provider.generate_data_key(wrapping, INDEX_ROOT_CONTEXT, KeyLimits())
            version = self.store.add_index_key(
                self.provider.name, generated.key_id, generated.wrapped
            )
            self._index.remember_root(version, generated.key)
            self._load_keyring()
        self._emit("key_generated", key_id=generated.key_id, purpose="blind-index", version=version)
        return version

    def retire_index_key(self, version: int) -> None:
        """Stops matching lookups against index key ``version`` (after a re-index)."""
        with self._key_change("index_key_retire", version=version):
            self.store.set_index_key_state(version, "retired")
            self._index.forget(version)
            self._load_keyring()
        self._emit("key_retired", purpose="blind-index", version=version)

    def blind_index_key(self, purpose: str, version: int | None = None) -> BlindIndexKey:
        """The HMAC key of one blind index (a table, column and optionally tenant).

        Derived with HKDF from the index root key of ``version`` (default: the primary), so
        it never equals a DEK or a wrapping key, and two purposes never share a key.

        Raises:
            KeyStateError: The version does not exist or is retired.
        """
        if not isinstance(purpose, str) or not purpose:
            raise InvalidArgumentError("purpose must be a non-empty str")
        records = {r.version: r for r in self._index_records()}
        if version is None:
            version = next(v for v, r in records.items() if r.state == "primary")
        record = records.get(version)
        if record is None:
            raise KeyStateError(f"index key version {version} is not usable")
        return self._index.key(record, purpose)

    def active_index_versions(self) -> list[int]:
        """Index versions a lookup must match: the primary first, then the active ones."""
        versions = self.index_key_versions()
        primary = [v for v, st in versions if st == "primary"]
        return primary + [v for v, st in versions if st == "active"]

    def disable_cached_keys(self) -> None:
        """Drops every cached key: DEKs, index keys, and DEKs kept for use counting.

        For example after KMS reported the key disabled. No key handle this service held
        stays reachable through it afterwards.
        """
        self._prune_usage(everything=True)
        with self._state_lock:
            self._replace_enc_caches()
            self._dec_cache.clear()
        self._index.clear()
        self._branches.clear()

    def status(self) -> ServiceStatus:
        """A snapshot of keys, cache counters and provider health."""
        health = self.provider.health()
        self.flush_usage()
        self._load_keyring()
        return ServiceStatus(
            provider=self.provider.name,
            provider_ok=health.ok,
            provider_detail=health.detail,
            primary_version=self._primary.version,
            min_decryption_version=self._min_version,
            versions=list(self._versions.values()),
            deks_by_version=self.store.count_deks_by_version(),
            usage_by_version=self.store.usage_by_version(),
            cache=self.cache_stats(),
            keyring_epoch=self._keyring.snapshot.epoch,
            instances=self.store.instances(),
        )

    def _enc_stats(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for cache in self._enc_caches.values():
            total.update(cache.stats())
        return dict(total)

    def cache_usage(self) -> dict[str, float]:
        """Gauges of the encryption caches (oldest DEK age, largest budget fraction used)."""
        usages = [c.usage() for c in self._enc_caches.values()]
        return {k: max(u[k] for u in usages) for k in usages[0]}

    def close(self) -> None:
        """Flushes use counts, drops every cached key and closes the service.

        Also stops the keyring refresh, deregisters this instance and closes the key store's
        connections. Never raises for an unreachable key store: the use counts are then not
        recorded (they inform ``keys status``; every DEK's budget is enforced in the process
        that seals with it), and the instance's row expires after the liveness window.
        """
        try:
            self.flush_usage(retry_seconds=0.0)
        except KeyStoreUnavailableError as exc:
            _log.warning("use counts not recorded at close: %s", type(exc).__name__)
        finally:
            try:
                self.disable_cached_keys()
                self._finalizer()
            finally:
                self.store.close()

    def __enter__(self) -> EncryptionService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"EncryptionService(provider={self.provider.name!r}, "
            f"primary_version={self._primary.version}, store={self.store!r})"
        )
