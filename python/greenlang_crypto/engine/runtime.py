"""The runtime the service's roles share: provider, key store, keyring and the DEK caches.

It owns every piece of per-process key state: the encryption caches (one per key-reference
kind, replaced whenever the primary version changes), the decryption cache, the single-flight
locks, the use counts of stored DEKs, the self-fencing deadline and the keyring's background
thread. The roles (:mod:`.envelope`, :mod:`.streaming`, :mod:`.admin`, :mod:`.monitoring`)
reach it through the public methods below only.

Encryption (envelope encryption, NIST SP 800-38D AES-256-GCM): the encryption cache, keyed by
canonical context, holds an :class:`~greenlang_crypto._core.EnvelopeSealer`; a hit seals in
one Rust call. On a miss, one thread per cache key (single-flight) asks the provider for a
DEK bound to the context; with stored references the wrapped DEK is committed to the key
store first.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from greenlang_crypto import _forks, composition
from greenlang_crypto._core import (
    CacheSlot,
    DataKey,
    DekCache,
    EnvelopeSealer,
    monotonic_ns,
    stored_key_ref_id,
)
from greenlang_crypto.exceptions import (
    ConfigurationError,
    KeyRetiredError,
    KeyStoreUnavailableError,
    TenantErasingError,
)
from greenlang_crypto.keys.index_keys import INDEX_ROOT_CONTEXT, IndexKeys
from greenlang_crypto.keys.keyring import Keyring, KeyringSnapshot
from greenlang_crypto.providers.base import KeyLimits, NamesCurrentKey

from ._common import FLIGHT_STRIPES, REFERENCES

if TYPE_CHECKING:
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.context import EncryptionContext
    from greenlang_crypto.keys.branch import BranchKeys, ScopeMapper
    from greenlang_crypto.keys.store import IndexKeyRecord, KeyStore, KeyVersion
    from greenlang_crypto.providers.base import KeyProvider
    from greenlang_crypto.redis_cache import RedisKeyCache

    from .monitoring import Events

__all__ = ["CacheFollower", "Runtime"]

_log = logging.getLogger("greenlang_crypto.service")

#: Why a seal is refused when the fence has passed and the key store cannot be reached.
_UNCONFIRMED = "cannot encrypt: the keyring could not be confirmed (key store unreachable)"


class CacheFollower(Protocol):
    """An object that keeps the current encryption caches in its own attributes."""

    def follow_caches(self, caches: Mapping[str, DekCache], current: DekCache) -> None:
        """Takes the new caches (by key-reference kind) and the default kind's cache."""
        ...


def _stop_keyring(keyring: Keyring) -> None:
    # Runs at close() or when the owning service is collected (weakref.finalize), at most once.
    try:
        keyring.stop()
    except Exception as exc:  # interpreter shutdown: the row expires by itself
        _log.debug("keyring stop failed: %s", type(exc).__name__)


class Runtime:
    """Provider, key store, keyring and caches of one service.

    Args:
        config: The configuration.
        provider: The key provider.
        store: The key store.
        events: Where events and counts are pushed.
        branch_scope: Which branch key a context uses (default: ``config.branch_key_scope``).
        key_cache: A shared Redis cache of wrapped key records (default: from the config).
        clock: A monotonic clock for the caches and the keyring (default: the system clock).
    """

    def __init__(
        self,
        config: EncryptionServiceConfig,
        provider: KeyProvider,
        store: KeyStore,
        events: Events,
        *,
        branch_scope: str | ScopeMapper | None = None,
        key_cache: RedisKeyCache | None = None,
        clock: Any = None,
    ) -> None:
        self.config = config
        self.provider = provider
        self.store = store
        self.events = events
        self.limits = KeyLimits(max_messages=config.max_messages_per_dek)
        #: Tenants with a KMS key of their own (see EncryptionServiceConfig.tenant_kms_keys).
        self.tenant_kms_keys: dict[str, str] = dict(config.tenant_kms_keys)
        policy = config.commitment_policy
        #: The envelope format this service writes: v2 (key-committing) unless the policy
        #: keeps v1 for a fleet whose older instances cannot read v2 yet.
        self.format_version = 1 if policy == "forbid_encrypt_allow_decrypt" else 2
        #: Whether envelopes without a key commitment are refused on decrypt.
        self.require_commitment = policy == "require_encrypt_require_decrypt"
        ttl = config.cache_ttl_seconds
        self.cache_ttl = ttl
        # Only passed when given, so the caches, the keyring and the branch keys keep their
        # own default.
        self._clock_kw: dict[str, Any] = {} if clock is None else {"clock": clock}
        self._now_ns: Callable[[], int] = monotonic_ns if clock is None else clock.now_ns
        self.refresh_after = ttl * config.refresh_ahead_fraction
        self.max_plaintext = config.max_plaintext_bytes
        self.default_reference: str = config.key_reference
        self.dec_cache = self.new_cache()
        # Single-flight locks, striped: a lock per cache key would grow without bound under
        # many distinct contexts (a denial of service); two keys sharing a stripe only queue.
        self.flights = [threading.Lock() for _ in range(FLIGHT_STRIPES)]
        self.state_lock = threading.Lock()
        _forks.register(self, _forks.STORE)
        # Stored DEKs this process seals with (and when it started to), so their use counts
        # reach the key store; entries leave after the TTL so no key outlives its cache.
        self._usage_track: dict[int, tuple[DataKey, float]] = {}
        self.index = IndexKeys(self._unwrap_index_root, ttl)
        self._followers: list[weakref.WeakMethod[Callable[..., None]]] = []
        self._keyring_epoch: tuple[int, str] | None = None
        self.enc_caches: dict[str, DekCache] = {}
        #: The default key-reference kind's encryption cache.
        self.enc_cache: DekCache
        self._primary: KeyVersion
        self._versions: dict[int, KeyVersion]
        self._min_version: int
        self.slot: CacheSlot | None = None
        self.wrapping_keys: frozenset[tuple[str, str]] = frozenset()
        self.keyring = Keyring(
            store,
            self._first_version,
            refresh_seconds=config.keyring_refresh_seconds,
            **self._clock_kw,
        )
        # Self-fencing: seals stop at this deadline until the keyring confirms its view again.
        self._fence_lock = threading.Lock()
        self._fence_retry_at = 0.0
        #: The fleet's shared Redis cache of wrapped key records (None when not configured).
        self.shared_cache = composition.build_key_cache(config) if key_cache is None else key_cache
        self._branch_scope = branch_scope or config.branch_key_scope
        self._branches: BranchKeys | None = None
        self._branches_lock = threading.Lock()
        _forks.fresh_locks_after_fork(self, "_branches_lock")
        keyring = self.keyring
        self.apply_snapshot(None, keyring.snapshot)
        self._listen()
        self._finalizer: weakref.finalize[Any, Any] = weakref.finalize(self, _stop_keyring, keyring)

    @property
    def branches(self) -> BranchKeys:
        """The branch keys, built on first use.

        A process that never uses branch references (a one-shot CLI command, most services)
        neither imports nor builds them; nothing is cached before that first use, so there
        is nothing a later build could miss.
        """
        branches = self._branches
        if branches is None:
            with self._branches_lock:
                branches = self._branches
                if branches is None:
                    from greenlang_crypto.keys.branch import BranchKeys

                    keyring = self.keyring
                    branches = BranchKeys(
                        self.store,
                        self.provider,
                        self._branch_scope,
                        ttl=self.cache_ttl,
                        max_entries=self.config.cache_max_entries,
                        epoch=lambda: keyring.snapshot.epoch,
                        shared_cache=self.shared_cache,
                        confirm_epoch=keyring.confirms_epoch,
                        emit=self.events.emit,
                        wrapping_key=self.branch_wrapping_key,
                        **self._clock_kw,
                    )
                    self._branches = branches
        return branches

    def _listen(self) -> None:
        # The keyring (and its thread) must not keep the runtime alive: weak callbacks.
        on_change = weakref.WeakMethod(self.apply_snapshot)
        on_tick = weakref.WeakMethod(self.purge_expired)
        on_fence = weakref.WeakMethod(self.apply_fence)

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

        self.keyring.add_listener(changed)
        self.keyring.add_tick_listener(tick)
        self.keyring.add_fence_listener(fenced)
        self.keyring.start()

    def bind_lifetime(self, owner: object) -> None:
        """Stops the keyring when ``owner`` is collected (or at :meth:`close`), at most once."""
        self._finalizer.detach()
        self._finalizer = weakref.finalize(owner, _stop_keyring, self.keyring)

    def new_cache(self) -> DekCache:
        """A DEK cache with this service's size, TTL, clock and commitment policy."""
        cache = DekCache(self.config.cache_max_entries, self.cache_ttl, **self._clock_kw)
        if self.require_commitment:
            cache.set_require_commitment()
        return cache

    def add_cache_follower(self, follower: CacheFollower) -> None:
        """Keeps ``follower`` up to date with the encryption caches (held weakly)."""
        self._followers.append(weakref.WeakMethod(follower.follow_caches))
        follower.follow_caches(self.enc_caches, self.enc_caches[self.default_reference])

    # -- the keyring -----------------------------------------------------------------------

    def _first_version(self) -> tuple[str, str]:
        if self.config.provider == "aws-kms" and self.config.kms_key_ids:
            return self.provider.name, self.config.kms_key_ids[0]
        if isinstance(self.provider, NamesCurrentKey):
            return self.provider.name, str(self.provider.current_key_id())
        raise ConfigurationError("cannot determine the wrapping key id for version 1")

    @property
    def primary(self) -> KeyVersion:
        """The version new encryptions use."""
        return self._primary

    @property
    def versions(self) -> dict[int, KeyVersion]:
        """Key versions by number, as last loaded."""
        return self._versions

    @property
    def min_version(self) -> int:
        """Versions below this refuse to decrypt (only ever rises)."""
        return self._min_version

    def reload_keyring(self) -> None:
        """Re-reads the keyring now (admin paths; the data path never calls this)."""
        self.keyring.reload()

    def apply_snapshot(self, old: KeyringSnapshot | None, new: KeyringSnapshot) -> None:
        """Makes a new keyring view current: caches follow it before anything else can.

        Called by the keyring (under its lock) after every change it loads, whichever process
        made the change.
        """
        with self.state_lock:
            self._versions = dict(new.versions)
            self.wrapping_keys = new.wrapping_keys
            #: Tenants being erased: new_sealer refuses them (see KeyAdmin.erase_tenant).
            self.erasing = new.erasing
            if new.min_decryption_version > self.dec_cache.min_key_version:
                # Raise the floor inside the Rust cache first, so no hit below it is served
                # from here on, then drop the keys of retired versions. Inserts of keys fetched
                # concurrently check the minimum under this same lock (see
                # cache_decryption_key).
                self.dec_cache.raise_min_key_version(new.min_decryption_version)
                self.dec_cache.clear()
            self._min_version = new.min_decryption_version
            self._primary = new.primary
            epoch = (new.primary.version, new.primary.wrapping_key_id)
            if epoch != self._keyring_epoch:
                self._keyring_epoch = epoch
                self.replace_enc_caches()
            if old is not None and old.wrapping_keys - new.wrapping_keys:
                # A wrapping key was destroyed: DEKs unwrapped under it must go too.
                self.dec_cache.clear()
            if old is not None and old.index_keys != new.index_keys:
                retired = {r.version for r in new.index_keys if r.state == "retired"}
                for version in retired:
                    self.index.forget(version)
            if old is not None and old.epoch != new.epoch:
                self._apply_branch_changes()
            if old is not None and (
                old.erasing != new.erasing or old.erasure_epoch != new.erasure_epoch
            ):
                self._apply_erasure_change()

    def _apply_erasure_change(self) -> None:
        # A tenant erasure began or completed: no sealer, DEK or index key cached before it
        # may serve again. New caches (the old ones fenced shut, the slot the Rust fast path
        # reads repointed) send every next seal through new_sealer, which refuses tenants
        # being erased; the keys derived or unwrapped for everyone else come back on demand.
        self.replace_enc_caches()
        self.dec_cache.clear()
        self.index.clear()
        if self._branches is not None:
            self._branches.clear()

    def _apply_branch_changes(self) -> None:
        # New DEKs are derived from the current branch keys (the branch encryption cache starts
        # over: a derivation costs no KMS call); after a deletion or rewrap, DEKs derived from
        # branch keys are dropped from the decryption cache too.
        branches = self._branches
        if branches is None:
            return  # never used: nothing derived from a branch key is cached
        try:
            changed, dropped = branches.apply_changes()
        except Exception as exc:  # the store is down: the next epoch change retries
            _log.warning("branch key changes not loaded: %s", type(exc).__name__)
            return
        if changed:
            self.replace_enc_caches(only="branch")
        if dropped:
            from greenlang_crypto.keys.branch import BRANCH_DEK_PREFIX

            self.dec_cache.remove_prefix(BRANCH_DEK_PREFIX)

    def replace_enc_caches(self, only: str | None = None) -> None:
        """Starts new encryption caches (one per key-reference kind), keyed by canonical context.

        Caches are replaced rather than cleared when the primary version changes: a thread
        that was fetching a DEK for the old version puts it into the old, unreachable cache,
        so new writes can never pick up a stale version. ``only`` replaces one kind's cache
        (``branch`` after a branch-key rotation).
        """
        old = self.enc_caches
        for ref, cache in old.items():
            if only is None or ref == only:
                self.events.retire_cache_counts(cache.counts())
        caches = {
            ref: self.new_cache() if not old or only is None or ref == only else old[ref]
            for ref in REFERENCES
        }
        deadline = self.keyring.fence_deadline_ns
        for cache in caches.values():
            cache.set_fence(deadline)
        current = caches[self.default_reference]
        self.enc_caches = caches
        self.enc_cache = current
        if self.slot is None:
            self.slot = CacheSlot(current)
        else:
            self.slot.set(current)
        for follower in self._followers:
            follow = follower()
            if follow is not None:
                follow(caches, current)
        for ref, cache in old.items():
            if caches[ref] is not cache:
                # A thread that read the old cache before the switch must not seal
                # through it after this instance has confirmed the new view.
                cache.set_fence(0)

    def purge_expired(self) -> None:
        """Drops every cached key past its TTL (called by the keyring's background thread)."""
        self.dec_cache.purge_expired()
        for cache in self.enc_caches.values():
            cache.purge_expired()
        self.index.purge()
        if self._branches is not None:
            self._branches.purge()
        self.prune_usage()

    # -- fencing ---------------------------------------------------------------------------

    def apply_fence(self, deadline_ns: int | None) -> None:
        """Moves every encryption cache's fence (called by the keyring on each confirmation)."""
        for cache in self.enc_caches.values():
            cache.set_fence(deadline_ns)

    def check_fence(self) -> None:
        """Confirms the keyring view first when the fence has passed (the slow path only).

        Raises:
            KeyStoreUnavailableError: The key store cannot be reached, so this instance cannot
                know whether the version it would seal under has been retired meanwhile.
        """
        deadline = self.keyring.fence_deadline_ns
        if deadline is None or self._now_ns() < deadline:
            return
        with self._fence_lock:
            deadline = self.keyring.fence_deadline_ns
            if deadline is None or self._now_ns() < deadline:
                return  # another thread confirmed while this one waited
            if time.monotonic() < self._fence_retry_at:
                # Fail fast for a moment after a failed attempt: each attempt can wait for a
                # connection, and every writer thread would otherwise queue up behind it.
                raise KeyStoreUnavailableError(_UNCONFIRMED)
            try:
                confirmed = self.keyring.confirm()
            except KeyStoreUnavailableError as exc:
                self._fence_retry_at = time.monotonic() + 1.0
                raise KeyStoreUnavailableError(_UNCONFIRMED) from exc
            if not confirmed:
                raise KeyStoreUnavailableError(
                    "cannot encrypt: this instance's keyring could not be confirmed"
                )

    # -- DEKs ------------------------------------------------------------------------------

    def flight(self, cache_id: bytes) -> threading.Lock:
        """The single-flight lock of one cache key."""
        return self.flights[hash(cache_id) % FLIGHT_STRIPES]

    def wrapping_key_for(self, version: KeyVersion, tenant_id: str | None) -> str:
        """The KMS key a new DEK or branch key of ``tenant_id`` is generated under.

        The tenant's own key when ``tenant_kms_keys`` names one, else the version's.
        """
        if tenant_id is not None:
            own = self.tenant_kms_keys.get(tenant_id)
            if own is not None:
                return own
        return version.wrapping_key_id

    def branch_wrapping_key(self, version: KeyVersion, scope: str) -> str:
        """The KMS key a new branch key of ``scope`` is generated under (see above)."""
        tenant = scope[len("tenant:") :] if scope.startswith("tenant:") else None
        return self.wrapping_key_for(version, tenant)

    def new_sealer(
        self, version: KeyVersion, ctx: EncryptionContext, reference: str
    ) -> EnvelopeSealer:
        """A sealer with a fresh DEK under ``version`` (a provider call, or a derivation).

        Raises:
            TenantErasingError: The context's tenant is being erased.
        """
        if ctx.tenant_id in self.erasing:
            raise TenantErasingError()
        if reference == "branch":
            # Derived in Rust from the scope's branch key: no KMS call unless the branch key
            # is not unwrapped in this process yet (once per TTL).
            return self.branches.sealer(
                version, ctx, self.limits, format_version=self.format_version
            )
        started = time.perf_counter()
        generated = self.provider.generate_data_key(
            self.wrapping_key_for(version, ctx.tenant_id), ctx, self.limits
        )
        emit = self.events.emit
        emit(
            "key_cache_miss",
            operation="encrypt",
            data_class=ctx.data_class,
            key_version=version.version,
        )
        emit(
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
            self.dec_cache.put(stored_key_ref_id(dek_id), generated.key, ctx.data_class)
            self._track_usage(dek_id, generated.key)
            return EnvelopeSealer(
                generated.key,
                key_version=version.version,
                context=ctx.canonical,
                dek_id=dek_id,
                format_version=self.format_version,
            )
        return EnvelopeSealer(
            generated.key,
            key_version=version.version,
            context=ctx.canonical,
            format_version=self.format_version,
            provider=self.provider.name,
            key_id=generated.key_id,
            wrapped_dek=generated.wrapped,
            context_digest=True,
        )

    def sealer(self, ctx: EncryptionContext, reference: str) -> tuple[DekCache, EnvelopeSealer]:
        """The cached sealer of ``ctx`` (made on a miss, one thread per key), and its cache.

        Raises:
            KeyStoreUnavailableError: The fence has passed and cannot be confirmed.
        """
        self.check_fence()
        # Read the cache before the version: caches are replaced after the primary changes,
        # so a new cache always comes with the new version (see replace_enc_caches).
        cache = self.enc_caches[reference]
        version = self._primary
        cache_id = ctx.canonical
        with self.flight(reference.encode() + b"|" + cache_id):
            hit = cache.get_with_age(cache_id)
            if hit is not None and hit[1] < self.refresh_after:
                sealer = hit[0]
                assert isinstance(sealer, EnvelopeSealer)
                return cache, sealer
            sealer = self.new_sealer(version, ctx, reference)
            cache.put(cache_id, sealer, ctx.data_class)
            return cache, sealer

    def cache_decryption_key(
        self, ref_id: bytes, key: DataKey, key_version: int, data_class: str
    ) -> None:
        """Caches an unwrapped DEK for decryption, unless its version was retired meanwhile.

        Raises:
            KeyRetiredError: ``key_version`` is below the minimum decryption version.
        """
        # Checked under the lock that retirement raises the minimum under, so a key fetched
        # by a decrypt that started before a retirement never lands in the cache after it.
        with self.state_lock:
            if key_version < self._min_version:
                raise KeyRetiredError(key_version, self._min_version)
            self.dec_cache.put(ref_id, key, data_class)

    def _unwrap_index_root(self, record: IndexKeyRecord) -> DataKey:
        return self.provider.decrypt_data_key(
            record.wrapping_key_id, record.wrapped, INDEX_ROOT_CONTEXT, KeyLimits()
        )

    # -- use counts --------------------------------------------------------------------------

    def _track_usage(self, dek_id: int, key: DataKey) -> None:
        with self.state_lock:
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

    def prune_usage(self, *, everything: bool = False) -> None:
        """Writes out and forgets tracked DEKs past the TTL (or all of them).

        A DEK past the TTL is out of every cache, so its counters are final; holding it any
        longer would keep the key itself alive.
        """
        cutoff = time.monotonic() - self.cache_ttl
        with self.state_lock:
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
        with self.state_lock:
            items = list(self._usage_track.items())
        self.store.record_usage(
            {i: (k.messages_used, k.bytes_used) for i, (k, _) in items},
            retry_seconds=retry_seconds,
        )
        self.prune_usage()

    # -- lifecycle -------------------------------------------------------------------------

    def disable_cached_keys(self) -> None:
        """Drops every cached key: DEKs, index keys, and DEKs kept for use counting.

        For example after KMS reported the key disabled. No key handle this service held
        stays reachable through it afterwards.
        """
        self.prune_usage(everything=True)
        with self.state_lock:
            self.replace_enc_caches()
            self.dec_cache.clear()
        self.index.clear()
        if self._branches is not None:
            self._branches.clear()

    def _after_fork_in_child(self) -> None:
        # A parent thread may have been inside a KMS call under a flight lock at the fork.
        # Replaced in place: the roles may hold the list.
        self.flights[:] = [threading.Lock() for _ in range(FLIGHT_STRIPES)]
        self.state_lock = threading.Lock()

    def close(self) -> None:
        """Flushes use counts, drops every cached key, stops the keyring, closes the store.

        Never raises for an unreachable key store: the use counts are then not recorded
        (they inform ``keys status``; every DEK's budget is enforced in the process that
        seals with it), and the instance's row expires after the liveness window.
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
