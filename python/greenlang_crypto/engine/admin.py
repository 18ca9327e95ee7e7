"""Key administration: rotation, rewrap, retirement, branch keys, index keys and system keys.

Every state change runs inside the key-change guards (the audit log records the intent
before the change and the outcome after), then reloads the keyring so this instance follows
at once; changes that must reach the whole fleet first wait for it (:meth:`KeyAdmin.await_fleet`).
The reads here write nothing: an index key is created only by the paths that need one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenlang_crypto._core import parse_envelope
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    DataErasedError,
    DecryptionError,
    InvalidArgumentError,
    KeyStateError,
)
from greenlang_crypto.keys.erasures import BRANCH_TENANT_PREFIX, ERASING, tenant_of_scope
from greenlang_crypto.keys.index_keys import INDEX_ROOT_CONTEXT
from greenlang_crypto.providers.base import (
    CreatesMasterKeys,
    GeneratedDataKey,
    KeyLimits,
    RotatesKeyOnDemand,
)

from ._common import ContextLike, RotationResult, as_bytes, as_context
from .schedule import RotationSchedule, rotation_schedule


def _key_change_guard() -> type[KeyChangeGuard]:
    # Imported when a key change runs, not with the service: the event module is not needed
    # by a process that only encrypts and decrypts.
    from greenlang_crypto.events import KeyChangeGuard

    return KeyChangeGuard


if TYPE_CHECKING:
    from greenlang_crypto._core import BlindIndexKey, DataKey
    from greenlang_crypto.events import KeyChangeGuard
    from greenlang_crypto.keys.store import IndexKeyRecord, InstanceRecord, KeyVersion

    from .monitoring import Events
    from .runtime import Runtime

__all__ = ["ErasureReport", "KeyAdmin", "tenant_digest"]

#: Per-tenant blind-index purposes end with this, then the tenant id (see sqlalchemy.blind_index).
_PURPOSE_TENANT = "|tenant="


def tenant_digest(tenant_id: str) -> str:
    """A stable pseudonym of a tenant for audit records and events (a truncated SHA-256).

    Erasure records must not keep the erased tenant's id in clear; whoever knows the id
    recomputes this to find the records. It is not a secret: a guessed id can be checked.
    """
    return hashlib.sha256(b"glc-tenant|" + tenant_id.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """Outcome of :meth:`KeyAdmin.erase_tenant`.

    Attributes:
        tenant_id: The erased tenant.
        stored_deks_destroyed: Stored DEKs this call deleted.
        branch_keys_destroyed: Branch keys this call deleted.
        instances_acknowledged: Other live instances that confirmed the erasure (instances
            silent past their fence count as fenced, not as acknowledging).
        began: Whether this call began the erasure (False: it joined one under way, left by
            an interrupted run or run by another admin right now).
        completed: Whether this call deleted the keys (False: another admin did first).
        epoch: The keyring epoch at which the erasure completed.
        seconds: How long the call took.
        kms_key_deletion_date: When the tenant's own KMS key will be deleted (ISO 8601),
            when this call scheduled it; None otherwise.
    """

    tenant_id: str
    stored_deks_destroyed: int
    branch_keys_destroyed: int
    instances_acknowledged: int
    began: bool
    completed: bool
    epoch: int
    seconds: float
    kms_key_deletion_date: str | None = None

    @property
    def keys_destroyed(self) -> int:
        """Stored DEKs and branch keys this call deleted."""
        return self.stored_deks_destroyed + self.branch_keys_destroyed


class KeyAdmin:
    """Changes and inspects the keyring, branch keys, index keys and system keys.

    Args:
        runtime: The provider, key store and keyring.
        events: The observers (their key-change guards) and where events are pushed.
    """

    def __init__(self, runtime: Runtime, events: Events) -> None:
        self._runtime = runtime
        self._events = events

    @contextmanager
    def key_change(self, action: str, **details: object) -> Iterator[None]:
        """Runs one key-state change inside the context of every :class:`KeyChangeGuard`.

        A guard (the audit log) records the intent on entry and raises when it cannot, so the
        change never happens unrecorded; on exit it records the outcome. Without guards this
        is a no-op.
        """
        with ExitStack() as stack:
            guard = _key_change_guard()
            for observer in self._events.observers:
                if isinstance(observer, guard):
                    stack.enter_context(observer.key_change(action, details))
            yield

    # -- the keyring -----------------------------------------------------------------------

    def refresh_keyring(self) -> bool:
        """Loads key changes made elsewhere now, instead of at the next background refresh.

        Returns whether anything changed.
        """
        return self._runtime.keyring.refresh()

    def instances(self) -> list[InstanceRecord]:
        """Instances registered in the key store (live or not), most recently seen first."""
        return self._runtime.store.instances()

    def live_instances(self) -> list[InstanceRecord]:
        """Instances whose last heartbeat is within the liveness window."""
        return self._runtime.keyring.live_instances()

    def versions(self) -> list[KeyVersion]:
        """All key versions (re-read from the key store)."""
        self._runtime.reload_keyring()
        return list(self._runtime.versions.values())

    def rotation_schedule(self, now: float | None = None) -> RotationSchedule:
        """The rotation policy's due dates from the key store's timestamps (re-read).

        Args:
            now: The time to compute for (default: the wall clock).
        """
        runtime = self._runtime
        runtime.reload_keyring()
        snapshot = runtime.keyring.snapshot
        from greenlang_crypto.keys.branch_store import BranchKeyStore

        primary = runtime.primary.version
        oldest = BranchKeyStore(runtime.store).oldest_active(primary)
        return rotation_schedule(
            runtime.config.rotation_policy,
            runtime.versions.values(),
            snapshot.index_keys,
            oldest,
            time.time() if now is None else now,
        )

    def retired_keys_left(self) -> int:
        """Stored DEKs and branch keys of versions already retired (0 after a whole retire).

        More than 0 only when a retirement with ``delete_stored_deks`` was cut off between
        raising the minimum and deleting them; running it again finishes it.
        """
        runtime = self._runtime
        floor = runtime.min_version
        counts = Counter(runtime.store.count_deks_by_version())
        counts.update(runtime.branches.rows.count_by_version())
        return sum(n for v, n in counts.items() if v < floor)

    def record_autopilot_step(self, status: str, reasons: list[str], runner: str) -> None:
        """Keeps the rotation autopilot's last outcome in the key store, for ``keys status``.

        Args:
            status: ``done``, ``progressing`` or ``blocked``.
            reasons: Why, one sentence each (names and counts only, never a row value).
            runner: Which process ran the step (host and pid).
        """
        self._runtime.store.record_autopilot_step(status, list(reasons), runner, time.time())

    def last_autopilot_step(self) -> dict[str, Any] | None:
        """The rotation autopilot's last recorded outcome (``None``: it never ran)."""
        return self._runtime.store.last_autopilot_step()

    def rotate_stale_branch_keys(self, older_than: float, limit: int = 100) -> list[str]:
        """Rotates the branch keys of up to ``limit`` scopes made before ``older_than``.

        Only active keys under the primary key version count (a data-key rotation gives
        every scope a new branch key anyway). Returns the scopes rotated, oldest first.
        """
        from greenlang_crypto.keys.branch_store import BranchKeyStore

        runtime = self._runtime
        scopes = BranchKeyStore(runtime.store).scopes_created_before(
            runtime.primary.version, older_than, limit
        )
        for scope in scopes:
            self.rotate_branch_key(scope)
        return scopes

    def stored_dek_count(self) -> int:
        """How many stored DEKs the key store holds (all versions)."""
        return sum(self._runtime.store.count_deks_by_version().values())

    def can_create_wrapping_key(self) -> bool:
        """Whether the provider can create a wrapping key by itself (the local provider)."""
        return isinstance(self._runtime.provider, CreatesMasterKeys)

    def create_wrapping_key(self) -> str:
        """Creates a new wrapping key at the provider (local provider) and returns its id.

        Raises:
            KeyStateError: The provider cannot create wrapping keys (use a KMS key id).
        """
        provider = self._runtime.provider
        if not isinstance(provider, CreatesMasterKeys):
            raise KeyStateError("this provider cannot create wrapping keys; name one")
        return str(provider.create_master_key())

    def rotate(
        self, *, new_wrapping_key_id: str | None = None, rotate_kms_key: bool = False
    ) -> RotationResult:
        """Makes version N+1 primary; older versions keep decrypting (dual-key window).

        With the local provider a new master key is created unless one is given. With AWS
        KMS the new version uses ``new_wrapping_key_id`` or the same CMK; with
        ``rotate_kms_key`` KMS also rotates that CMK's key material on demand first. Every
        instance encrypts under the new version within ``keyring_refresh_seconds``.
        """
        runtime = self._runtime
        provider = runtime.provider
        with self.key_change(
            "key_rotate",
            old_version=runtime.primary.version,
            wrapping_key_id=new_wrapping_key_id,
            rotate_kms_key=rotate_kms_key,
        ):
            runtime.reload_keyring()
            old = runtime.primary.version
            if rotate_kms_key:
                # On-demand rotation of the CMK's key material; old material keeps decrypting.
                if not isinstance(provider, RotatesKeyOnDemand):
                    raise KeyStateError("this provider has no on-demand key rotation")
                provider.rotate_key_on_demand(runtime.primary.wrapping_key_id)
            wrapping = new_wrapping_key_id
            if wrapping is None:
                wrapping = (
                    str(provider.create_master_key())
                    if isinstance(provider, CreatesMasterKeys)
                    else runtime.primary.wrapping_key_id
                )
            new = runtime.store.add_primary_version(provider.name, wrapping)
            runtime.reload_keyring()
        self._events.emit(
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
        Keys wrapped under a tenant's own KMS key (``tenant_kms_keys``) stay on it: moving
        them would let a backup outlive that key's deletion. Returns the number of rows
        rewrapped.
        """
        runtime = self._runtime
        store, provider = runtime.store, runtime.provider
        keep = {new_wrapping_key_id, *runtime.tenant_kms_keys.values()}
        with self.key_change("key_rewrap", wrapping_key_id=new_wrapping_key_id):
            done = 0
            for batch in store.iter_deks():
                for record in batch:
                    if record.wrapping_key_id in keep:
                        continue
                    ctx = EncryptionContext.from_mapping(record.context)
                    new_blob = provider.reencrypt_data_key(
                        record.wrapping_key_id, record.wrapped, new_wrapping_key_id, ctx
                    )
                    if store.replace_wrapped(
                        record.dek_id, record.wrapped, new_blob, new_wrapping_key_id
                    ):
                        done += 1
                    if progress is not None:
                        progress(1)
            for index_record in store.index_keys():
                if index_record.wrapping_key_id == new_wrapping_key_id:
                    continue
                new_blob = provider.reencrypt_data_key(
                    index_record.wrapping_key_id,
                    index_record.wrapped,
                    new_wrapping_key_id,
                    INDEX_ROOT_CONTEXT,
                )
                store.replace_index_wrapped(
                    index_record.version, index_record.wrapped, new_blob, new_wrapping_key_id
                )
            done += self._rewrap_branch_keys(new_wrapping_key_id, keep)
            for version in store.versions():
                if version.provider == provider.name:
                    store.set_wrapping_key(version.version, new_wrapping_key_id)
            runtime.reload_keyring()
            self.await_fleet(runtime.keyring.snapshot.epoch)
        self._events.emit("key_rewrapped", key_id=new_wrapping_key_id, count=done)
        return done

    def _rewrap_branch_keys(self, new_wrapping_key_id: str, keep: set[str]) -> int:
        from greenlang_crypto.keys.branch import branch_key_context

        rows = self._runtime.branches.rows
        done = 0
        for batch in rows.iter_all():
            for record in batch:
                if record.wrapping_key_id in keep:
                    continue
                new_blob = self._runtime.provider.reencrypt_data_key(
                    record.wrapping_key_id,
                    record.wrapped,
                    new_wrapping_key_id,
                    branch_key_context(record.scope, record.branch_id),
                )
                if rows.replace_wrapped(
                    record.branch_id, record.wrapped, new_blob, new_wrapping_key_id
                ):
                    done += 1
        if done:
            rows.rewrapped()
        return done

    def destroy_wrapping_key(self, wrapping_key_id: str) -> int:
        """Removes a former wrapping key from the keyring's history.

        Inline envelopes whose DEK is wrapped under it stop decrypting (in every instance
        within the refresh bound). Returns the number of history rows marked destroyed.

        Raises:
            KeyStateError: A version, stored DEK or index key still uses the key.
        """
        runtime = self._runtime
        with self.key_change("key_destroy", wrapping_key_id=wrapping_key_id):
            # An instance that has not loaded the rewrap yet may still make inline envelopes
            # under the old wrapping key: wait until none can before destroying it.
            runtime.reload_keyring()
            self.await_fleet(runtime.keyring.snapshot.epoch)
            marked = runtime.store.destroy_wrapping_key(wrapping_key_id)
            runtime.reload_keyring()
        self._events.emit("key_retired", purpose="wrapping-key", key_id=wrapping_key_id)
        return marked

    def await_fleet(self, epoch: int) -> None:
        """Waits until no other instance can still act on a keyring view older than ``epoch``.

        An instance counts once it has confirmed ``epoch`` (or later), or once it has been
        silent past its liveness window, which is longer than its fence: from then on it
        cannot seal before confirming, and a confirmation loads the current view. So the wait
        always ends, within the longest window among the registered instances.
        """
        keyring = self._runtime.keyring
        me = keyring.instance_id
        while True:
            laggards = [
                i for i in keyring.live_instances() if i.instance_id != me and i.epoch < epoch
            ]
            if not laggards:
                return
            time.sleep(0.05)

    # -- retirement ------------------------------------------------------------------------

    def retirement_blockers(self, min_version: int) -> list[str]:
        """Why retiring versions below ``min_version`` is unsafe now (empty: it is safe).

        Lists live instances that still encrypt under a version below it (they have not
        loaded the rotation yet) and unfinished re-encryption job ranges.
        """
        self._runtime.reload_keyring()
        ranges = self._runtime.store.unfinished_job_ranges()
        jobs = [f"{ranges} re-encryption job range(s) are not done"] if ranges else []
        return self._instance_blockers(min_version) + jobs

    def _instance_blockers(self, min_version: int) -> list[str]:
        keyring = self._runtime.keyring
        return [
            f"instance {i.host}:{i.pid} ({i.instance_id[:8]}) still encrypts under "
            f"v{i.primary_version} (epoch {i.epoch})"
            for i in keyring.live_instances()
            if i.instance_id != keyring.instance_id and i.primary_version < min_version
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
        runtime = self._runtime
        store = runtime.store
        if wait_seconds is None:
            wait_seconds = runtime.config.keyring_refresh_seconds + 1.0
        with self.key_change(
            "key_retire",
            min_version=min_version,
            delete_stored_deks=delete_stored_deks,
            force=force,
        ):
            runtime.reload_keyring()
            if min_version <= runtime.min_version:
                # The minimum only ever rises. A retirement cut off between raising it and
                # deleting the keys (a crash, a kill) is finished by running it again.
                remaining = self.retired_keys_left() if delete_stored_deks else 0
                if not remaining:
                    return
                min_version = runtime.min_version
            else:
                if min_version > runtime.primary.version:
                    raise KeyStateError("cannot retire the primary key version")
                if not force:
                    # Instances converge on their own within the refresh bound: give them
                    # that long. Unfinished jobs take longer; they are refused at once.
                    deadline = time.monotonic() + wait_seconds
                    while self._instance_blockers(min_version) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    blockers = self.retirement_blockers(min_version)
                    if blockers:
                        raise KeyStateError(
                            f"retiring versions below {min_version} is unsafe now: "
                            + "; ".join(blockers)
                        )
                counts = Counter(store.count_deks_by_version())
                # Branch keys of retired versions go with their stored DEKs.
                counts.update(runtime.branches.rows.count_by_version())
                remaining = sum(n for v, n in counts.items() if v < min_version)
                if remaining and not delete_stored_deks:
                    raise KeyStateError(
                        f"{remaining} stored DEK(s) still belong to versions below {min_version}"
                    )
                # Raise the minimum first, then delete: a decrypt racing the deletion is
                # refused as retired rather than reported as a missing DEK.
                store.retire_below(min_version)
                runtime.reload_keyring()
            if remaining:
                store.delete_deks_below(min_version)
                runtime.branches.rows.delete_below(min_version)
                runtime.reload_keyring()
        self._events.emit("key_retired", min_version=min_version, deleted_stored_deks=remaining)

    # -- branch keys -----------------------------------------------------------------------

    def branch_scope(self, context: ContextLike) -> str:
        """The branch-key scope a context maps to (``service``, ``tenant:<id>``, ...)."""
        return self._runtime.branches.scope_of(as_context(context))

    def rotate_branch_key(self, scope: str) -> int:
        """Makes a new branch key active for ``scope``; returns its id.

        Envelopes made under older branch keys of the scope keep decrypting. Every instance
        derives new DEKs from the new key within ``keyring_refresh_seconds``.
        """
        runtime = self._runtime
        with self.key_change("branch_key_rotate", scope=scope):
            record = runtime.branches.rotate(scope, runtime.primary)
            runtime.reload_keyring()
        self._events.emit(
            "key_rotated",
            purpose="branch-key",
            branch_id=record.branch_id,
            new_version=record.branch_version,
        )
        return record.branch_id

    def delete_branch_keys(self, scope: str) -> int:
        """Deletes every branch key of ``scope``: its data can never be decrypted again.

        With per-tenant scopes (``tenant:<id>``) this crypto-shreds one tenant's branch-key
        data and leaves everyone else's data untouched. Such a deletion runs the two phases
        of :meth:`erase_tenant` restricted to branch keys (stored DEKs and blind-index keys
        stay): no instance seals under a key about to be deleted. Other scopes are deleted
        at once, and every instance drops them within ``keyring_refresh_seconds``. An
        encryption for the scope afterwards creates a new branch key. Returns the number of
        branch keys deleted.
        """
        tenant = tenant_of_scope(scope)
        if tenant:
            return self._erase(tenant, stored=False).branch_keys_destroyed
        runtime = self._runtime
        with self.key_change("branch_key_delete", scope=scope):
            ids = runtime.branches.delete_scope(scope)
            runtime.reload_keyring()
            # Return only once no instance can still seal under the deleted keys: every live
            # one has loaded the deletion, or has been silent past its fence.
            self.await_fleet(runtime.keyring.snapshot.epoch)
        self._events.emit("key_retired", purpose="branch-key", count=len(ids))
        return len(ids)

    def branch_key_stats(self) -> dict[str, int]:
        """Branch-key counters: unwraps, created, store_reads, derivations, cached_keys."""
        return self._runtime.branches.stats()

    def key_cache_stats(self) -> dict[str, int]:
        """Outcomes of the shared Redis key cache (empty when none is configured)."""
        cache = self._runtime.shared_cache
        return {} if cache is None else cache.stats()

    # -- tenant erasure --------------------------------------------------------------------

    def erase_tenant(
        self,
        tenant_id: str,
        *,
        schedule_kms_key_deletion: bool = False,
        pending_window_days: int = 30,
    ) -> ErasureReport:
        """Crypto-shreds one tenant: its stored DEKs, branch keys and blind-index keys.

        Two phases, each a key-state change that every live instance confirms before the
        next step (:meth:`await_fleet`; an instance paused or cut off past its fence counts
        as fenced, and confirms the newest view before it seals again):

        1. The tenant is marked *erasing*. Every instance that loads this drops its cached
           keys and refuses to encrypt for the tenant (:class:`TenantErasingError`), so no
           write is acknowledged under a key about to be destroyed.
        2. Its stored DEKs (contexts with this ``tenant_id``) and its branch keys (scope
           ``tenant:<id>``) are deleted, leaving tombstones, and the tenant is marked
           *erased*: reading its old data raises :class:`DataErasedError` in every instance,
           and its per-tenant blind-index keys change (a fresh random salt), so lookups of
           its old values match nothing.

        Afterwards new encryptions for the same tenant id succeed under fresh keys (a new
        DEK, a new branch key, new index keys); the data erased stays erased. Running it
        again erases whatever was written since. It is idempotent and resumable: a run
        interrupted between the phases leaves the tenant *erasing* (encryptions refused)
        until it is run again, and two admins erasing one tenant at once join one erasure.
        Erasing a tenant without keys records the erasure. Inline envelopes (key wrapped in
        the envelope) are not erased by this; nor is data under a branch key shared by
        several tenants (scope ``service``).

        Deleting key rows does not reach a backup of the key store taken before: restored,
        it unwraps again while the KMS key that wrapped its rows lives. A tenant with a KMS
        key of its own (``tenant_kms_keys``) closes that gap: ``schedule_kms_key_deletion``
        schedules that key's deletion (KMS ScheduleKeyDeletion, ``pending_window_days``
        7-30) once the keys are destroyed, after which no backup, and no inline envelope,
        of the tenant's data can be decrypted.

        Raises:
            InvalidArgumentError: ``schedule_kms_key_deletion`` for a tenant without a KMS
                key of its own, or a pending window outside 7-30 days (nothing is done).
            InvalidContextError: ``tenant_id`` is not a valid tenant id.
            KeyStoreUnavailableError: The key store failed; run it again.
            AuditSinkUnavailableError: The audit log cannot record the change (nothing done).
        """
        # The same rules as a context's tenant_id (type, length, characters).
        EncryptionContext(tenant_id=tenant_id, data_class="erasure")
        own_key = self._runtime.tenant_kms_keys.get(tenant_id)
        if schedule_kms_key_deletion:
            if own_key is None:
                raise InvalidArgumentError("the tenant has no KMS key of its own to delete")
            if (
                isinstance(pending_window_days, bool)
                or not isinstance(pending_window_days, int)
                or not 7 <= pending_window_days <= 30
            ):
                raise InvalidArgumentError("pending_window_days must be 7-30 (KMS limits)")
        report = self._erase(tenant_id, stored=True)
        if not schedule_kms_key_deletion or own_key is None:
            return report
        # After the keys are gone and the fleet has confirmed: the KMS key is the last
        # thing that could unwrap a backup of them.
        schedule: Any = getattr(self._runtime.provider, "schedule_key_deletion", None)
        if schedule is None:
            raise InvalidArgumentError("the key provider cannot delete KMS keys")
        when = str(schedule(own_key, pending_window_days))
        self._events.emit(
            "tenant_erased",
            phase="kms_key_deletion_scheduled",
            tenant_digest=tenant_digest(tenant_id),
            key_id=own_key,
        )
        return dataclasses.replace(report, kms_key_deletion_date=when)

    def _erase(self, tenant_id: str, *, stored: bool) -> ErasureReport:
        runtime = self._runtime
        erasures = runtime.store.erasures
        started = time.monotonic()
        digest = tenant_digest(tenant_id)
        scope = BRANCH_TENANT_PREFIX + tenant_id
        action = "tenant_erase" if stored else "branch_key_delete"
        with self.key_change(action, tenant_digest=digest, scope_kind="tenant"):
            _record, began = erasures.begin(tenant_id)
            runtime.reload_keyring()
            # Phase 1 holds once no instance can still seal for the tenant on an older view.
            self.await_fleet(runtime.keyring.snapshot.epoch)
            self._events.emit("tenant_erased", phase="erasing", tenant_digest=digest, began=began)
            erased = erasures.complete(tenant_id, scope, stored=stored)
            if erased is not None and runtime.shared_cache is not None:
                # Entries written before are refused anyway (older epoch); removing them
                # keeps the shredded wrapped keys from lingering in Redis until they expire.
                runtime.shared_cache.delete(
                    [f"dek:{i}" for i in erased.dek_ids]
                    + [f"branch:id:{i}" for i, _ in erased.branch_ids]
                    + [f"branch:current:{v}:{scope}" for v in {v for _, v in erased.branch_ids}]
                )
            runtime.reload_keyring()
            epoch = runtime.keyring.snapshot.epoch
            self.await_fleet(epoch)
            me = runtime.keyring.instance_id
            acknowledged = sum(
                1
                for i in runtime.keyring.live_instances()
                if i.instance_id != me and i.epoch >= epoch
            )
        report = ErasureReport(
            tenant_id=tenant_id,
            stored_deks_destroyed=0 if erased is None else len(erased.dek_ids),
            branch_keys_destroyed=0 if erased is None else len(erased.branch_ids),
            instances_acknowledged=acknowledged,
            began=began,
            completed=erased is not None,
            epoch=epoch,
            seconds=time.monotonic() - started,
        )
        self._events.emit(
            "tenant_erased",
            phase="erased",
            tenant_digest=digest,
            purpose="tenant" if stored else "branch-key",
            stored_deks=report.stored_deks_destroyed,
            branch_keys=report.branch_keys_destroyed,
            count=report.keys_destroyed,
            instances=acknowledged,
            completed=report.completed,
        )
        if not stored:
            # What a branch-key deletion always reported, for the observers that count it.
            self._events.emit(
                "key_retired", purpose="branch-key", count=report.branch_keys_destroyed
            )
        return report

    def is_erased(self, envelope: bytes) -> bool:
        """Whether an envelope's key was erased, read from its public header (no decryption).

        True for a stored-DEK or branch-key envelope whose key a tenant erasure (or a
        branch-key deletion) destroyed; False otherwise, including inline envelopes (their
        key travels with them), keys that were never known, and branch keys deleted before
        the V015 migration (no tombstone was kept then). One indexed key-store read.

        Raises:
            TypeError: ``envelope`` is not bytes-like.
            InvalidEnvelopeError: It is not an envelope.
        """
        header = parse_envelope(as_bytes(envelope, "envelope"))
        erasures = self._runtime.store.erasures
        if header.kind == "stored" and header.dek_id is not None:
            return erasures.was_erased("stored", header.dek_id)
        if header.kind == "branch" and header.branch_id is not None:
            return erasures.was_erased("branch", header.branch_id)
        return False

    # -- blind-index keys ------------------------------------------------------------------

    def _usable_index_records(self) -> tuple[IndexKeyRecord, ...]:
        # The paths that need an index key create version 1 on first use; reads do not.
        records = self._runtime.keyring.snapshot.index_keys
        if not records:
            self._add_index_key(first=True)
            records = self._runtime.keyring.snapshot.index_keys
        return records

    def index_key_versions(self) -> list[tuple[int, str]]:
        """Index key versions and states, as loaded (empty before the first index key)."""
        return [(r.version, r.state) for r in self._runtime.keyring.snapshot.index_keys]

    def rotate_index_key(self) -> int:
        """Adds a new primary blind-index root key.

        Older versions keep serving lookups until they are retired (the dual-index window of
        a rotation).
        """
        return self._add_index_key(first=False)

    def _add_index_key(self, *, first: bool) -> int:
        runtime = self._runtime
        provider = runtime.provider
        with self.key_change("index_key_rotate"):
            wrapping = runtime.primary.wrapping_key_id
            generated = provider.generate_data_key(wrapping, INDEX_ROOT_CONTEXT, KeyLimits())
            version = runtime.store.add_index_key(
                provider.name, generated.key_id, generated.wrapped, first=first
            )
            runtime.reload_keyring()
            made = any(
                r.version == version and r.wrapped == generated.wrapped
                for r in runtime.keyring.snapshot.index_keys
            )
            if made:
                runtime.index.remember_root(version, generated.key)
        if made:
            self._events.emit(
                "key_generated", key_id=generated.key_id, purpose="blind-index", version=version
            )
        return version

    def retire_index_key(self, version: int) -> None:
        """Stops matching lookups against index key ``version`` (after a re-index)."""
        runtime = self._runtime
        with self.key_change("index_key_retire", version=version):
            runtime.store.set_index_key_state(version, "retired")
            runtime.index.forget(version)
            runtime.reload_keyring()
        self._events.emit("key_retired", purpose="blind-index", version=version)

    def blind_index_key(self, purpose: str, version: int | None = None) -> BlindIndexKey:
        """The HMAC key of one blind index (a table, column and optionally tenant).

        Derived with HKDF from the index root key of ``version`` (default: the primary), so
        it never equals a DEK or a wrapping key, and two purposes never share a key. Creates
        index key version 1 when there is none yet.

        A per-tenant purpose (ending ``|tenant=<id>``) of a tenant erased with
        :meth:`erase_tenant` derives another key than before the erasure: values indexed
        before it match nothing.

        Raises:
            KeyStateError: The version does not exist or is retired.
            DataErasedError: The purpose's tenant is being erased right now.
        """
        if not isinstance(purpose, str) or not purpose:
            raise InvalidArgumentError("purpose must be a non-empty str")
        records = {r.version: r for r in self._usable_index_records()}
        if version is None:
            version = next(v for v, r in records.items() if r.state == "primary")
        record = records.get(version)
        if record is None:
            raise KeyStateError(f"index key version {version} is not usable")
        return self._runtime.index.key(record, self._tenant_purpose(purpose))

    def _tenant_purpose(self, purpose: str) -> str:
        """``purpose`` with the salt of its tenant's last erasure (when it names an erased one).

        Raises:
            DataErasedError: The purpose's tenant is being erased.
        """
        # The first marker: the library puts the tenant last, and a tenant id may contain it.
        head, found, tenant = purpose.partition(_PURPOSE_TENANT)
        if not found or not head:
            return purpose
        erasure = self._runtime.store.erasures.get(tenant)
        if erasure is None:
            return purpose  # never erased: the key every existing index was built with
        if erasure.state == ERASING:
            raise DataErasedError()
        if erasure.index_salt is None:
            return purpose
        # The old key (without this salt) is never derived again, and each erasure replaces
        # the salt, so index values written before an erasure match nothing after it.
        return f"{purpose}|erasure={erasure.index_salt.hex()}"

    def active_index_versions(self) -> list[int]:
        """Index versions a lookup must match: the primary first, then the active ones.

        Creates index key version 1 when there is none yet.
        """
        records = self._usable_index_records()
        primary = [r.version for r in records if r.state == "primary"]
        return primary + [r.version for r in records if r.state == "active"]

    # -- system keys (the audit chain root) ------------------------------------------------

    def generate_system_key(self, context: EncryptionContext) -> GeneratedDataKey:
        """A new key for the library's own use (the audit chain root).

        Wrapped by the provider under the primary version's wrapping key, bound to
        ``context``.
        """
        runtime = self._runtime
        return runtime.provider.generate_data_key(
            runtime.primary.wrapping_key_id, context, KeyLimits()
        )

    def unwrap_system_key(
        self, provider: str, key_id: str, wrapped: bytes, context: EncryptionContext
    ) -> DataKey:
        """Unwraps a key made by :meth:`generate_system_key`.

        Raises:
            DecryptionError: It was wrapped by another provider, or does not unwrap.
        """
        if provider != self._runtime.provider.name:
            raise DecryptionError()
        return self._runtime.provider.decrypt_data_key(key_id, wrapped, context, KeyLimits())
