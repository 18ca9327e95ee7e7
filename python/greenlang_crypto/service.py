"""EncryptionService: the one facade that the API, the CLI and the SQLAlchemy types call.

The work is done by role objects in :mod:`greenlang_crypto.engine`, built here around one
shared :class:`~greenlang_crypto.engine.runtime.Runtime` (provider, key store, keyring, DEK
caches):

* :class:`~greenlang_crypto.engine.envelope.Envelope`: encrypt and decrypt single values.
* :class:`~greenlang_crypto.engine.streaming.Streaming`: streams and files.
* :class:`~greenlang_crypto.engine.admin.KeyAdmin`: rotation, retirement, branch, index and
  system keys.
* :class:`~greenlang_crypto.engine.monitoring.Monitor`: statistics, health and status, fed
  by the :class:`~greenlang_crypto.engine.monitoring.Events` sink the other roles push to.

Each public method of the facade is the role object's own bound method, stored on the
instance when it is built, so a call through the facade costs nothing over a call to the role.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from greenlang_crypto import composition
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.engine._common import (
    ContextLike,
    KeyReference,
    RotationResult,
    ServiceStatus,
)
from greenlang_crypto.engine.admin import ErasureReport, KeyAdmin, tenant_digest
from greenlang_crypto.engine.envelope import Envelope
from greenlang_crypto.engine.monitoring import Events, Monitor
from greenlang_crypto.engine.runtime import Runtime
from greenlang_crypto.engine.streaming import Streaming
from greenlang_crypto.exceptions import ConfigurationError

if TYPE_CHECKING:
    from greenlang_crypto._core import DekCache
    from greenlang_crypto.events import ServiceObserver, TypedServiceObserver
    from greenlang_crypto.keys.branch import BranchKeys, ScopeMapper
    from greenlang_crypto.keys.keyring import Keyring
    from greenlang_crypto.keys.store import KeyStore
    from greenlang_crypto.observing import SystemKeyHandle
    from greenlang_crypto.providers.base import KeyProvider
    from greenlang_crypto.redis_cache import RedisKeyCache
    from greenlang_crypto.stats import ServiceStats

__all__ = [
    "ContextLike",
    "EncryptionService",
    "ErasureReport",
    "KeyReference",
    "RotationResult",
    "ServiceStats",
    "ServiceStatus",
    "tenant_digest",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class _Served(Generic[_P, _R]):
    """A facade method served by a role object's method of the same name.

    On the class it is the role's function (its signature and docstring); each instance
    stores the role object's bound method under the name when it is built, which Python then
    finds before this (non-data) descriptor.
    """

    def __init__(self, role: str, function: Callable[Concatenate[Any, _P], _R]) -> None:
        self.role = role
        self.function = function
        self.__doc__ = function.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(
        self, obj: None, owner: type | None = None
    ) -> Callable[Concatenate[Any, _P], _R]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Callable[_P, _R]: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> Callable[..., _R]:
        if obj is None:
            return self.function
        bound: Callable[_P, _R] = getattr(getattr(obj, self.role), self.function.__name__)
        vars(obj)[self.name] = bound
        return bound


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
        clock: A monotonic clock (``_core.ManualClock``) for the DEK caches and the keyring,
            so tests can step past TTLs and fences (default: the system clock).

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
        clock: object | None = None,
    ) -> None:
        self.config = config or EncryptionServiceConfig()
        self._events = Events(tuple(observers), per_operation_events)
        self.provider: KeyProvider = provider or composition.build_provider(self.config)
        self.store = key_store or composition.build_key_store(self.config)
        self._runtime = runtime = Runtime(
            self.config,
            self.provider,
            self.store,
            self._events,
            branch_scope=branch_scope,
            key_cache=key_cache,
            clock=clock,
        )
        runtime.bind_lifetime(self)
        self._envelope = Envelope(runtime, self._events)
        self._streaming = Streaming(runtime, self._events, self._envelope.data_key_for_stream)
        self._admin = KeyAdmin(runtime, self._events)
        self._monitor = Monitor(runtime, self._events)
        # The hot path first, explicitly: the role's bound methods, called without a hop.
        self.encrypt = self._envelope.encrypt
        self.decrypt = self._envelope.decrypt
        for klass in type(self).__mro__:
            for name, member in vars(klass).items():
                if isinstance(member, _Served) and name not in vars(self):
                    member.__get__(self)

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
            if not composition.local_master_key_exists(directory):
                composition.create_local_master_key(directory)
            return cls(config)
        finally:
            os.close(lock_fd)

    # -- the envelope path -----------------------------------------------------------------

    encrypt = _Served("_envelope", Envelope.encrypt)
    encrypt_str = _Served("_envelope", Envelope.encrypt_str)
    encrypt_batch = _Served("_envelope", Envelope.encrypt_batch)
    encrypt_async = _Served("_envelope", Envelope.encrypt_async)
    value_encryptor = _Served("_envelope", Envelope.value_encryptor)
    decrypt = _Served("_envelope", Envelope.decrypt)
    decrypt_str = _Served("_envelope", Envelope.decrypt_str)
    decrypt_batch = _Served("_envelope", Envelope.decrypt_batch)
    decrypt_async = _Served("_envelope", Envelope.decrypt_async)
    value_decryptor = _Served("_envelope", Envelope.value_decryptor)
    reencrypt = _Served("_envelope", Envelope.reencrypt)

    # -- streams ---------------------------------------------------------------------------

    encrypt_stream = _Served("_streaming", Streaming.encrypt_stream)
    open_decrypting = _Served("_streaming", Streaming.open_decrypting)
    decrypt_stream = _Served("_streaming", Streaming.decrypt_stream)
    encrypt_file = _Served("_streaming", Streaming.encrypt_file)
    decrypt_file = _Served("_streaming", Streaming.decrypt_file)
    encrypt_stream_async = _Served("_streaming", Streaming.encrypt_stream_async)
    decrypt_stream_async = _Served("_streaming", Streaming.decrypt_stream_async)
    encrypt_file_async = _Served("_streaming", Streaming.encrypt_file_async)
    decrypt_file_async = _Served("_streaming", Streaming.decrypt_file_async)

    # -- keys ------------------------------------------------------------------------------

    refresh_keyring = _Served("_admin", KeyAdmin.refresh_keyring)
    instances = _Served("_admin", KeyAdmin.instances)
    live_instances = _Served("_admin", KeyAdmin.live_instances)
    versions = _Served("_admin", KeyAdmin.versions)
    stored_dek_count = _Served("_admin", KeyAdmin.stored_dek_count)
    can_create_wrapping_key = _Served("_admin", KeyAdmin.can_create_wrapping_key)
    create_wrapping_key = _Served("_admin", KeyAdmin.create_wrapping_key)
    rotate = _Served("_admin", KeyAdmin.rotate)
    rewrap = _Served("_admin", KeyAdmin.rewrap)
    destroy_wrapping_key = _Served("_admin", KeyAdmin.destroy_wrapping_key)
    retirement_blockers = _Served("_admin", KeyAdmin.retirement_blockers)
    retired_keys_left = _Served("_admin", KeyAdmin.retired_keys_left)
    rotation_schedule = _Served("_admin", KeyAdmin.rotation_schedule)
    rotate_stale_branch_keys = _Served("_admin", KeyAdmin.rotate_stale_branch_keys)
    record_autopilot_step = _Served("_admin", KeyAdmin.record_autopilot_step)
    last_autopilot_step = _Served("_admin", KeyAdmin.last_autopilot_step)
    retire_versions_below = _Served("_admin", KeyAdmin.retire_versions_below)
    branch_scope = _Served("_admin", KeyAdmin.branch_scope)
    rotate_branch_key = _Served("_admin", KeyAdmin.rotate_branch_key)
    delete_branch_keys = _Served("_admin", KeyAdmin.delete_branch_keys)
    erase_tenant = _Served("_admin", KeyAdmin.erase_tenant)
    is_erased = _Served("_admin", KeyAdmin.is_erased)
    branch_key_stats = _Served("_admin", KeyAdmin.branch_key_stats)
    key_cache_stats = _Served("_admin", KeyAdmin.key_cache_stats)
    index_key_versions = _Served("_admin", KeyAdmin.index_key_versions)
    rotate_index_key = _Served("_admin", KeyAdmin.rotate_index_key)
    retire_index_key = _Served("_admin", KeyAdmin.retire_index_key)
    blind_index_key = _Served("_admin", KeyAdmin.blind_index_key)
    active_index_versions = _Served("_admin", KeyAdmin.active_index_versions)
    generate_system_key = _Served("_admin", KeyAdmin.generate_system_key)
    unwrap_system_key = _Served("_admin", KeyAdmin.unwrap_system_key)

    # -- the runtime -----------------------------------------------------------------------

    flush_usage = _Served("_runtime", Runtime.flush_usage)
    disable_cached_keys = _Served("_runtime", Runtime.disable_cached_keys)

    # -- statistics, health and status -----------------------------------------------------

    stats = _Served("_monitor", Monitor.stats)
    failure_counts = _Served("_monitor", Monitor.failure_counts)
    operation_counts = _Served("_monitor", Monitor.operation_counts)
    latency = _Served("_monitor", Monitor.latency)
    cache_stats = _Served("_monitor", Monitor.cache_stats)
    cache_usage = _Served("_monitor", Monitor.cache_usage)
    provider_health = _Served("_monitor", Monitor.provider_health)
    key_store_health = _Served("_monitor", Monitor.key_store_health)
    rotation_status = _Served("_monitor", Monitor.rotation_status)
    status = _Served("_monitor", Monitor.status)
    add_observer = _Served("_events", Events.add_observer)

    @property
    def per_operation_events(self) -> bool:
        """Whether every encrypt and decrypt emits an event to the observers."""
        return self._events.per_op

    @property
    def provider_name(self) -> str:
        """The key provider's name (``local``, ``aws-kms``)."""
        return self.provider.name

    @property
    def system_keys(self) -> SystemKeyHandle:
        """The handle observers use for the library's own keys (the audit chain root)."""
        from greenlang_crypto.observing import SystemKeyHandle

        return SystemKeyHandle(
            provider_name=self.provider.name,
            generate=self._admin.generate_system_key,
            unwrap=self._admin.unwrap_system_key,
        )

    @property
    def primary_key_created_at(self) -> float:
        """When the primary key version was created (UNIX seconds; no key-store call)."""
        return self._runtime.primary.created_at

    @property
    def primary_version(self) -> int:
        """The key version new encryptions use."""
        return self._runtime.primary.version

    @property
    def envelope_format(self) -> int:
        """The envelope format version this service writes.

        2 unless the commitment policy is ``forbid_encrypt_allow_decrypt``; re-encryption
        moves older values to it.
        """
        return self._runtime.format_version

    @property
    def min_decryption_version(self) -> int:
        """Versions below this refuse to decrypt (only ever rises)."""
        return self._runtime.min_version

    @property
    def keyring_epoch(self) -> int:
        """The key store change counter this instance has loaded."""
        return self._runtime.keyring.snapshot.epoch

    @property
    def instance_id(self) -> str:
        """This instance's id in the key store's instance table."""
        return self._runtime.keyring.instance_id

    # Runtime state that white-box tests and benchmarks inspect, read-only.

    @property
    def _enc_cache(self) -> DekCache:
        return self._runtime.enc_cache

    @property
    def _enc_caches(self) -> dict[str, DekCache]:
        return self._runtime.enc_caches

    @property
    def _dec_cache(self) -> DekCache:
        return self._runtime.dec_cache

    @property
    def _keyring(self) -> Keyring:
        return self._runtime.keyring

    @property
    def _branches(self) -> BranchKeys:
        return self._runtime.branches

    @property
    def _flights(self) -> list[Any]:
        return self._runtime.flights

    def _apply_fence(self, deadline_ns: int | None) -> None:
        self._runtime.apply_fence(deadline_ns)

    def close(self) -> None:
        """Flushes use counts, drops every cached key and closes the service.

        Also stops the keyring refresh, deregisters this instance and closes the key store's
        connections. Never raises for an unreachable key store: the use counts are then not
        recorded (they inform ``keys status``; every DEK's budget is enforced in the process
        that seals with it), and the instance's row expires after the liveness window.
        """
        self._runtime.close()

    def __enter__(self) -> EncryptionService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"EncryptionService(provider={self.provider.name!r}, "
            f"primary_version={self._runtime.primary.version}, store={self.store!r})"
        )


def __getattr__(name: str) -> object:
    # ServiceStats is re-exported here for importers but loaded on first use: a process that
    # never reads statistics (a one-shot CLI command) does not import its dataclasses.
    if name == "ServiceStats":
        from greenlang_crypto.stats import ServiceStats

        return ServiceStats
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
