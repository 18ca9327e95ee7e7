"""Branch keys: one KMS unwrap per branch key per TTL, DEKs derived locally in Rust.

With per-context DEKs, every context (tenant, data class) costs one KMS call per cache TTL
per process. With branch keys the key store holds a few wrapped 256-bit *branch keys*; a
process unwraps one once per TTL and derives each DEK from it with HKDF-SHA256 over the branch
key, a random salt that the envelope carries, and the canonical context (``src/core/branch.rs``).
KMS cost then depends on the number of branch keys, not on the number of tenants.

Scope (which branch key a context uses) is configurable:

- ``service``: one branch key for the whole service (cheapest);
- ``tenant``: one per tenant (``tenant:<id>``): a tenant's data depends only on its own branch
  key, and deleting it (:meth:`BranchKeys.delete_scope`) crypto-shreds the tenant;
- a callable mapping a context to a scope name.

Branch keys belong to a key version of the keyring and are wrapped by that version's wrapping
key, so rotation, rewrap and retirement of the keyring apply to them. A rotation of one scope's
branch key, or its deletion, bumps the keyring epoch and writes a change row: every instance
learns about it through the keyring's propagation (LISTEN/NOTIFY, polling) and drops exactly
the keys of that scope.

The KMS ``EncryptionContext`` of a branch key names its scope and id (``branch_scope``,
``branch_id``), so CloudTrail shows whose key was unwrapped, and a wrapped key copied into
another row does not unwrap.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from greenlang_crypto import _forks
from greenlang_crypto._core import (
    KIND_BRANCH,
    DataKey,
    DekCache,
    EnvelopeHeader,
    EnvelopeSealer,
    ManualClock,
    branch_data_key,
    branch_sealer,
    branch_stats,
    dek_cache_id,
)
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    ConfigurationError,
    DataErasedError,
    DecryptionError,
    GreenlangCryptoError,
    KeyNotFoundError,
)
from greenlang_crypto.keys.branch_store import BranchKeyRecord, BranchKeyStore
from greenlang_crypto.keys.store import KeyStore, KeyVersion
from greenlang_crypto.providers.base import KeyLimits, KeyProvider

if TYPE_CHECKING:
    from greenlang_crypto.redis_cache import RedisKeyCache, SharedEntry

__all__ = [
    "BRANCH_DEK_PREFIX",
    "BRANCH_SCOPES",
    "BranchKeyRecord",
    "BranchKeyStore",
    "BranchKeys",
    "ScopeMapper",
    "branch_key_context",
    "dek_cache_id",
    "scope_mapper",
]

#: Decryption-cache ids of every DEK derived from a branch key start with this byte.
BRANCH_DEK_PREFIX = bytes([KIND_BRANCH])
#: Built-in scope policies: one branch key for the service, or one per tenant.
BRANCH_SCOPES = ("service", "tenant")
#: Longest scope name (it is also sent to KMS as EncryptionContext).
MAX_SCOPE_LEN = 256
_STRIPES = 64

ScopeMapper = Callable[[EncryptionContext], str]


def scope_mapper(policy: str | ScopeMapper) -> ScopeMapper:
    """The context-to-scope function of a policy name, or ``policy`` itself if callable.

    Raises:
        ConfigurationError: Unknown policy name.
    """
    if callable(policy):
        return policy
    if policy == "service":
        return lambda ctx: "service"
    if policy == "tenant":
        return lambda ctx: "tenant:" + ctx.tenant_id
    raise ConfigurationError(f"branch key scope must be one of {BRANCH_SCOPES} or a callable")


def branch_key_context(scope: str, branch_id: int) -> EncryptionContext:
    """The context a branch key is wrapped under (the KMS ``EncryptionContext``).

    It names the scope, so CloudTrail shows which tenant's branch key was used, and the id, so
    a wrapped key moved to another row or scope fails to unwrap.
    """
    return EncryptionContext(
        tenant_id="_branch",
        data_class="branch-key",
        extra={"branch_scope": scope, "branch_id": str(branch_id)},
    )


class BranchObserver(Protocol):
    """What :class:`BranchKeys` reports to (the service relays it to its observers)."""

    def __call__(self, event: str, **fields: object) -> None:
        """Receives one event with non-secret fields."""
        ...


class BranchKeys:
    """This process's view of the branch keys: records, unwrapped keys, derivations.

    Unwrapped branch keys live in a Rust :class:`DekCache` for at most ``ttl`` seconds
    (zeroized when dropped, emptied in a forked child); records for the same time in memory.
    The data path touches neither: derived DEKs are cached as sealers by the service, so only a
    cache miss reaches here, and only a miss here reaches the key store or KMS.

    Args:
        store: The key store (branch keys live in its database).
        provider: Wraps and unwraps branch keys.
        scope: ``service``, ``tenant`` or a callable mapping a context to a scope name.
        ttl: Seconds an unwrapped branch key or a record stays in memory.
        max_entries: Bound on unwrapped branch keys held.
        epoch: Returns the keyring epoch this instance has loaded.
        shared_cache: Optional Redis cache of wrapped records, shared by a fleet.
        confirm_epoch: Asks the key store whether an epoch above the loaded one is real (a
            shared entry stamped with a newer epoch is used only then).
        emit: Receives events (``branch_key_created``, ``branch_key_unwrapped``...).
        clock: The clock the unwrapped-key cache reads its TTL on (the system clock when
            None): the service's clock, so its tests step past a TTL without sleeping.
        wrapping_key: Returns the KMS key a new branch key of a scope is generated under
            (default: the key version's; a tenant with a KMS key of its own gets that one).
    """

    def __init__(
        self,
        store: KeyStore,
        provider: KeyProvider,
        scope: str | ScopeMapper,
        *,
        ttl: float,
        max_entries: int,
        epoch: Callable[[], int],
        shared_cache: RedisKeyCache | None = None,
        confirm_epoch: Callable[[int], bool] | None = None,
        emit: BranchObserver | None = None,
        clock: ManualClock | None = None,
        wrapping_key: Callable[[KeyVersion, str], str] | None = None,
    ) -> None:
        self.rows = BranchKeyStore(store)
        self._provider = provider
        self._wrapping_key = wrapping_key or (lambda version, _scope: version.wrapping_key_id)
        self._scope_of = scope_mapper(scope)
        self._ttl = ttl
        self._epoch = epoch
        self._seen_epoch = epoch()
        self.shared_cache = shared_cache
        self._confirm_epoch = confirm_epoch
        self._emit = emit
        self._keys = DekCache(max_entries, ttl, clock=clock)
        # Records are small, but one per scope a process has seen: bounded like the keys.
        self._max_records = 4 * max_entries
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._current: dict[tuple[str, int], tuple[BranchKeyRecord, float]] = {}
        # Counts forgets and clears: a record read from the store before one of them is not
        # remembered after it (it may name a key that was deleted meanwhile).
        self._generation = 0
        self._records: dict[int, tuple[BranchKeyRecord, float]] = {}
        #: Counters: unwraps (KMS Decrypt), created (GenerateDataKey), store_reads...
        self.counts: Counter[str] = Counter()
        _forks.register(self, _forks.STORE)

    def _after_fork_in_child(self) -> None:
        # A parent thread may have been unwrapping a branch key under a stripe lock.
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]

    # -- scope ---------------------------------------------------------------------------

    def scope_of(self, ctx: EncryptionContext) -> str:
        """The scope name of a context.

        Raises:
            ConfigurationError: A mapping callable returned something unusable.
        """
        scope = self._scope_of(ctx)
        if not isinstance(scope, str) or not scope or len(scope) > MAX_SCOPE_LEN:
            raise ConfigurationError("a branch key scope must be a str of 1-256 characters")
        return scope

    # -- records -------------------------------------------------------------------------

    def _fresh(self, entry: tuple[BranchKeyRecord, float] | None) -> BranchKeyRecord | None:
        if entry is None or time.monotonic() - entry[1] >= self._ttl:
            return None
        return entry[0]

    def _remember(
        self, record: BranchKeyRecord, *, current: bool = True, generation: int | None = None
    ) -> None:
        now = time.monotonic()
        with self._lock:
            if generation is not None and generation != self._generation:
                return  # a deletion or rotation was applied while the record was read
            self._records[record.branch_id] = (record, now)
            if current and record.state == "active":
                self._current[(record.scope, record.key_version)] = (record, now)
            # Dicts keep insertion order: past the bound, forget the oldest half.
            if len(self._records) > self._max_records:
                self._records = dict(list(self._records.items())[len(self._records) // 2 :])
            if len(self._current) > self._max_records:
                self._current = dict(list(self._current.items())[len(self._current) // 2 :])

    def _current_record(
        self, scope: str, version: KeyVersion
    ) -> tuple[BranchKeyRecord, DataKey | None]:
        """The active record of a scope, and its key when this call created it."""
        slot = (scope, version.version)
        record = self._fresh(self._current.get(slot))
        if record is not None:
            return record, None
        with self._stripes[hash(scope) % _STRIPES]:
            record = self._fresh(self._current.get(slot))
            if record is not None:
                return record, None
            created = None
            generation = self._generation
            record = self._shared_current(scope, version.version)
            if record is None:
                self.counts["store_reads"] += 1
                record = self.rows.current(scope, version.version)
                if record is None:
                    record, created = self._create(scope, version, rotate=False)
                if self.shared_cache is not None:
                    # The entry's MAC needs the key: the sealer unwraps it next anyway.
                    key = created if created is not None else self._unwrapped(record)
                    self._share(record, key, current=True)
            self._remember(record, generation=generation)
            return record, created

    def _record(self, branch_id: int) -> tuple[BranchKeyRecord | None, bool]:
        """The record of ``branch_id``, and whether it was just read from the key store.

        A record read from the store is shared only after the caller has checked it against
        the request and unwrapped its key (the entry's MAC needs the key).
        """
        record = self._fresh(self._records.get(branch_id))
        if record is not None:
            return record, False
        record = self._shared_by_id(branch_id)
        from_store = record is None
        if record is None:
            self.counts["store_reads"] += 1
            record = self.rows.get(branch_id)
            if record is None:
                return None, False
        self._remember(record, current=False)
        return record, from_store

    def _shared_current(self, scope: str, key_version: int) -> BranchKeyRecord | None:
        if self.shared_cache is None:
            return None
        entry = self.shared_cache.get(
            f"branch:current:{key_version}:{scope}",
            self._epoch(),
            confirm_epoch=self._confirm_epoch,
        )
        record = self._from_entry(entry)
        if record is None:
            return None
        # The slot's own scope and version, and a key that still takes new data.
        if record.scope != scope or record.key_version != key_version or record.state != "active":
            self.shared_cache.reject()
            return None
        return record if self._verified(record, entry) else None

    def _shared_by_id(self, branch_id: int) -> BranchKeyRecord | None:
        if self.shared_cache is None:
            return None
        entry = self.shared_cache.get(
            f"branch:id:{branch_id}", self._epoch(), confirm_epoch=self._confirm_epoch
        )
        record = self._from_entry(entry)
        if record is None:
            return None
        if record.branch_id != branch_id:
            self.shared_cache.reject()
            return None
        return record if self._verified(record, entry) else None

    def _from_entry(self, entry: SharedEntry | None) -> BranchKeyRecord | None:
        if entry is None:
            return None
        record = _from_shared(entry.record)
        if record is None and self.shared_cache is not None:
            self.shared_cache.reject()
        return record

    def _verified(self, record: BranchKeyRecord, entry: SharedEntry | None) -> bool:
        """Unwraps the record's key and checks the entry's MAC with it; False: read the store.

        A key unwrapped here enters the key cache only once the MAC holds, so a planted
        entry never leaves a key behind. A scope's deleted ids are never served: deletion
        raises the epoch, and an entry cannot be re-stamped without its key.
        """
        assert entry is not None and self.shared_cache is not None
        key = self._keys.get(_key_id(record.branch_id))
        if not isinstance(key, DataKey):
            try:
                key = self._provider.decrypt_data_key(
                    record.wrapping_key_id,
                    record.wrapped,
                    branch_key_context(record.scope, record.branch_id),
                    KeyLimits(),
                )
            except GreenlangCryptoError:
                # KMS refused the blob under the context the record claims: planted.
                self.shared_cache.reject()
                return False
            self.counts["unwraps"] += 1
            if not entry.verify(key):
                self.shared_cache.reject()
                return False
            self._keys.put(_key_id(record.branch_id), key)
            return True
        if not entry.verify(key):
            self.shared_cache.reject()
            return False
        return True

    def _share(self, record: BranchKeyRecord, key: DataKey, *, current: bool) -> None:
        if self.shared_cache is None:
            return
        epoch = self._epoch()
        data = record.as_json()
        self.shared_cache.put(f"branch:id:{record.branch_id}", data, epoch, key)
        if current and record.state == "active":
            self.shared_cache.put(
                f"branch:current:{record.key_version}:{record.scope}", data, epoch, key
            )

    # -- keys ----------------------------------------------------------------------------

    def _create(
        self, scope: str, version: KeyVersion, *, rotate: bool
    ) -> tuple[BranchKeyRecord, DataKey | None]:
        branch_id = self.rows.new_id()
        generated = self._provider.generate_data_key(
            self._wrapping_key(version, scope), branch_key_context(scope, branch_id), KeyLimits()
        )
        self.counts["created"] += 1
        record = self.rows.insert(
            BranchKeyRecord(
                branch_id,
                scope,
                0,
                version.version,
                "active",
                self._provider.name,
                generated.key_id,
                generated.wrapped,
                time.time(),
            ),
            rotate=rotate,
        )
        if record.branch_id != branch_id:
            # Another process created the scope's key first: use that one (ours is dropped).
            return record, None
        self._keys.put(_key_id(branch_id), generated.key)
        if self._emit is not None:
            self._emit(
                "branch_key_created",
                branch_id=branch_id,
                scope=scope,
                key_version=version.version,
                key_id=generated.key_id,
                fingerprint=generated.key.fingerprint,
            )
        return record, generated.key

    def _unwrapped(self, record: BranchKeyRecord) -> DataKey:
        kid = _key_id(record.branch_id)
        key = self._keys.get(kid)
        if isinstance(key, DataKey):
            return key
        with self._stripes[record.branch_id % _STRIPES]:
            key = self._keys.get(kid)
            if isinstance(key, DataKey):
                return key
            started = time.perf_counter()
            key = self._provider.decrypt_data_key(
                record.wrapping_key_id,
                record.wrapped,
                branch_key_context(record.scope, record.branch_id),
                KeyLimits(),
            )
            self.counts["unwraps"] += 1
            self._keys.put(kid, key)
        if self._emit is not None:
            self._emit(
                "branch_key_unwrapped",
                branch_id=record.branch_id,
                scope=record.scope,
                key_version=record.key_version,
                fingerprint=key.fingerprint,
                seconds=time.perf_counter() - started,
            )
        return key

    def sealer(
        self,
        version: KeyVersion,
        ctx: EncryptionContext,
        limits: KeyLimits,
        *,
        format_version: int = 2,
    ) -> EnvelopeSealer:
        """A sealer under a DEK freshly derived for ``ctx`` from its scope's branch key.

        Creates the scope's branch key under ``version`` on first use (one KMS
        GenerateDataKey); otherwise unwraps it at most once per TTL (one KMS Decrypt). Its
        envelopes are in format ``format_version`` (2, key-committing, unless the commitment
        policy keeps 1).
        """
        record, created = self._current_record(self.scope_of(ctx), version)
        key = created if created is not None else self._unwrapped(record)
        return branch_sealer(
            key,
            branch_id=record.branch_id,
            key_version=record.key_version,
            context=ctx.canonical,
            max_messages=limits.max_messages,
            max_bytes=limits.max_bytes,
            format_version=format_version,
        )

    def data_key(
        self,
        header: EnvelopeHeader,
        envelope: bytes,
        ctx: EncryptionContext,
        limits: KeyLimits,
        provider_name: str,
    ) -> DataKey:
        """The DEK of a branch envelope, derived again from its branch key.

        Raises:
            DataErasedError: The context's scope was erased (its branch keys deleted).
            KeyNotFoundError: No such branch key (a forged or unknown reference).
            DecryptionError: The branch key belongs to another tenant, key version or
                provider than the envelope and context claim (opaque).
        """
        branch_id = header.branch_id
        assert branch_id is not None
        record, from_store = self._record(branch_id)
        if record is None:
            if self.rows.erased(branch_id) or self.rows.was_erased(self.scope_of(ctx)):
                raise DataErasedError()
            raise KeyNotFoundError()
        if record.key_version != header.key_version or record.provider != provider_name:
            raise DecryptionError()
        if record.scope.startswith("tenant:") and record.scope != "tenant:" + ctx.tenant_id:
            # A tenant's branch key serves only that tenant's contexts; refusing here also
            # keeps one tenant's request from unwrapping another tenant's key at KMS.
            raise DecryptionError()
        key = self._unwrapped(record)
        if from_store:
            self._share(record, key, current=False)
        return branch_data_key(
            key,
            envelope,
            ctx.canonical,
            max_messages=limits.max_messages,
            max_bytes=limits.max_bytes,
        )

    # -- administration ------------------------------------------------------------------

    def rotate(self, scope: str, version: KeyVersion) -> BranchKeyRecord:
        """Makes a new branch key active for ``scope``; older ones keep decrypting."""
        record, _key = self._create(scope, version, rotate=True)
        self._forget_scope(scope, drop_keys=False)
        self._remember(record)
        return record

    def delete_scope(self, scope: str) -> list[int]:
        """Deletes every branch key of ``scope`` (crypto-shredding its data).

        Returns the deleted ids. Every instance drops them within the keyring's propagation
        bound; the shared cache forgets them at once.
        """
        deleted = self.rows.delete_scope(scope)
        ids = [i for i, _ in deleted]
        if self.shared_cache is not None:
            # Entries written before the deletion are refused anyway (their epoch is older);
            # removing them keeps shredded wrapped keys from lingering until they expire.
            self.shared_cache.delete(
                [f"branch:id:{i}" for i in ids]
                + [f"branch:current:{v}:{scope}" for v in {v for _, v in deleted}]
            )
        self._forget_scope(scope, drop_keys=True, ids=ids)
        return ids

    def _forget_scope(self, scope: str, *, drop_keys: bool, ids: list[int] | None = None) -> None:
        with self._lock:
            self._generation += 1
            self._current = {k: v for k, v in self._current.items() if k[0] != scope}
            if not drop_keys:
                return
            gone = set(ids or ()) | {i for i, (r, _) in self._records.items() if r.scope == scope}
            for i in gone:
                self._records.pop(i, None)
        for i in gone:
            self._keys.remove(_key_id(i))

    def apply_changes(self) -> tuple[bool, bool]:
        """Reads the branch-key changes made since the last call and drops what they name.

        Called when the keyring epoch moved. Returns whether any branch key changed (the
        caller then derives new DEKs from the current keys) and whether one was deleted or
        rewrapped (the caller then also drops the DEKs derived from branch keys).
        """
        rows = self.rows.changes_since(self._seen_epoch)
        dropped = False
        for epoch, scope, action in rows:
            self._seen_epoch = max(self._seen_epoch, epoch)
            if scope == "*":
                self.clear()
                dropped = True
                continue
            self._forget_scope(scope, drop_keys=action == "delete")
            dropped = dropped or action == "delete"
        return bool(rows), dropped

    def purge(self) -> None:
        """Drops records and unwrapped keys older than the TTL."""
        self._keys.purge_expired()
        cutoff = time.monotonic() - self._ttl
        with self._lock:
            self._current = {k: v for k, v in self._current.items() if v[1] > cutoff}
            self._records = {k: v for k, v in self._records.items() if v[1] > cutoff}

    def clear(self) -> None:
        """Drops every record and unwrapped branch key held by this process."""
        self._keys.clear()
        with self._lock:
            self._generation += 1
            self._current = {}
            self._records = {}

    def stats(self) -> dict[str, int]:
        """Counters: unwraps, created, store_reads, derivations (Rust), cached keys."""
        out = dict(self.counts)
        out.setdefault("unwraps", 0)
        out.setdefault("created", 0)
        out.setdefault("store_reads", 0)
        out["derivations"] = int(branch_stats()["derivations"])
        out["cached_keys"] = len(self._keys)
        return out

    def __repr__(self) -> str:
        return f"BranchKeys(cached={len(self._keys)}, unwraps={self.counts['unwraps']})"


def _key_id(branch_id: int) -> bytes:
    return branch_id.to_bytes(4, "big")


def _from_shared(data: dict[str, Any] | None) -> BranchKeyRecord | None:
    if data is None:
        return None
    try:
        return BranchKeyRecord.from_json(data)
    except (KeyError, ValueError, TypeError):
        return None  # a foreign or damaged entry: read the key store instead
