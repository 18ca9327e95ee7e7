"""The composition root: the one place that builds what a configuration describes.

Providers, key stores, the shared key cache, the service, its audit log and its metrics
collector are built here and nowhere else. The front doors (the CLI, the API, the compliance
and SQLAlchemy commands) and the service itself ask this module, so a provider is built, its
optional dependency reported, and an audit log opened, in exactly one way. Each builder
imports its dependency only when called: a command that needs no KMS never pays for
importing boto3, and one that writes no audit record never imports the audit package.

:class:`Composition` is the lazy form for one-shot commands: it opens the service or the
audit log on first use only, and closes what it opened.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from greenlang_crypto.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from greenlang_crypto.audit import AuditLog
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.events import ServiceObserver, TypedServiceObserver
    from greenlang_crypto.keys.store import KeyStore
    from greenlang_crypto.metrics import EncryptionMetrics
    from greenlang_crypto.providers.base import KeyProvider
    from greenlang_crypto.redis_cache import RedisKeyCache
    from greenlang_crypto.service import EncryptionService

__all__ = [
    "AUDIT_URL_ENV",
    "FROM_ENV",
    "Composition",
    "WiredService",
    "audit_url_from_env",
    "build_key_cache",
    "build_key_store",
    "build_metrics",
    "build_observed_service",
    "build_provider",
    "build_service",
    "create_local_master_key",
    "init_local_data_dir",
    "init_local_service",
    "local_master_key_exists",
    "open_audit_log",
    "require_initialized",
]

#: The environment variable naming the audit log (a sink URL) of every writer.
AUDIT_URL_ENV: Final = "GLC_AUDIT_URL"


class _FromEnv:
    """The type of :data:`FROM_ENV`."""

    def __repr__(self) -> str:
        return "FROM_ENV"


#: ``open_audit_log(url=FROM_ENV)``: the sink ``$GLC_AUDIT_URL`` names, else the default.
FROM_ENV: Final = _FromEnv()


def audit_url_from_env() -> str | None:
    """The audit sink URL in ``$GLC_AUDIT_URL``; None (the SQLite default) when unset or empty."""
    return os.environ.get(AUDIT_URL_ENV) or None


# -- providers, stores, caches ----------------------------------------------------------------


def build_provider(
    config: EncryptionServiceConfig,
    *,
    kms_observer: Callable[[str, str, float], None] | None = None,
) -> KeyProvider:
    """The key provider ``config`` names (the local one, or AWS KMS).

    Args:
        config: The configuration.
        kms_observer: With AWS KMS, the callback timing each KMS call (a metrics
            collector's ``kms_observer``); ignored by the local provider.

    Raises:
        ConfigurationError: The provider needs an extra that is not installed.
    """
    if config.provider == "local":
        from greenlang_crypto.providers.local import LocalKeyProvider

        return LocalKeyProvider(config.data_dir)
    try:
        from greenlang_crypto.providers.aws_kms import AwsKmsKeyProvider
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the aws-kms provider needs the aws extra (missing {exc.name}): "
            'pip install "greenlang-crypto[aws]"'
        ) from None
    extra: dict[str, Any] = {} if kms_observer is None else {"observer": kms_observer}
    # Tenant keys join the allow-list after the primary and its replicas: a DEK wrapped under
    # one is unwrapped only because the configuration names it.
    tenant_keys = tuple(k for k in config.tenant_kms_keys.values() if k not in config.kms_key_ids)
    return AwsKmsKeyProvider(
        keys=(*config.kms_key_ids, *dict.fromkeys(tenant_keys)),
        region=config.kms_region,
        endpoint_url=config.kms_endpoint_url,
        **extra,
    )


def build_key_store(config: EncryptionServiceConfig) -> KeyStore:
    """The key store at ``config``'s URL, with its pool settings."""
    from greenlang_crypto.keys.store import open_key_store

    return open_key_store(
        config.resolved_key_store_url,
        pool_size=config.key_store_pool_size,
        transaction_pooler=config.key_store_transaction_pooler,
    )


def build_key_cache(config: EncryptionServiceConfig) -> RedisKeyCache | None:
    """The shared Redis key cache ``config.key_cache_url`` names, or None when unset."""
    if not config.key_cache_url:
        return None
    from greenlang_crypto.redis_cache import RedisKeyCache

    return RedisKeyCache.from_url(config.key_cache_url, ttl_seconds=config.cache_ttl_seconds)


# -- the embedded default (local provider) ----------------------------------------------------


def local_master_key_exists(data_dir: str | os.PathLike[str]) -> bool:
    """Whether the local provider's data directory ``data_dir`` holds a master key."""
    from greenlang_crypto.providers.local import LocalKeyProvider

    return bool(LocalKeyProvider(data_dir).versions())


def create_local_master_key(data_dir: str | os.PathLike[str]) -> None:
    """Creates the local provider's first master key in ``data_dir`` (which must exist)."""
    from greenlang_crypto.providers.local import LocalKeyProvider

    LocalKeyProvider(data_dir).create_master_key()


def init_local_data_dir(config: EncryptionServiceConfig) -> bool:
    """Initializes the embedded default ``config`` names if its data directory is new.

    Does what ``greenlang-crypto init`` does: an absent directory is built beside its name
    (the first master key, and the keyring when the key store is the embedded one) and renamed
    into place, so it is whole or absent; an existing empty one (a volume's mount point, which
    no rename may replace) is built in a hidden directory inside it, under a lock on it, and
    its master keys moved into place last. Processes starting together on the same new
    directory all succeed on the one key: the first wins and the others find its key. A
    directory that holds a master key is left alone, as is a configuration with another
    provider (its keys are the operator's). With a key store of the operator's (a
    PostgreSQL URL) that already holds a keyring, a new master key would not open it: that
    is refused.

    Returns:
        Whether this call created the master key.

    Raises:
        ConfigurationError: The directory exists, is not empty and holds no master key (it
            belongs to something else, or lost its key: a new key would not open its data),
            or it holds no master key while the configured key store already holds a keyring
            (made under a master key that is elsewhere).
        KeyStoreUnavailableError: The configured key store could not be reached to check.
        OutputError: The directory could not be written (nothing is left).
    """
    import contextlib

    from greenlang_crypto._files import atomic_directory

    if config.provider != "local":
        return False
    target = Path(config.data_dir)
    if local_master_key_exists(target):
        return False
    foreign = ConfigurationError(
        f"{target} is not empty and holds no master key; move it away (or empty it) and "
        "initialize again"
    )
    if (
        config.key_store_url is not None
        and _keyring_exists(config)
        # Another process starting on the same directory may have put its key in place
        # (and then made the keyring) since the check above.
        and not local_master_key_exists(target)
    ):
        # The keyring lives in the operator's store and was made under a master key this
        # directory does not hold (a volume not mounted, the wrong path): a new key would
        # start a service that seals data no other instance reads and reads none of the old.
        raise ConfigurationError(
            f"{target} holds no master key, but the key store already holds a keyring: put "
            "the master key it was created with there (or point data_dir at it); a new "
            "master key would not open it"
        )
    if target.exists() and not target.is_dir():
        raise ConfigurationError(f"{target} is not a directory")
    if target.is_dir():
        # It exists: often a volume's mount point, which no rename may replace (EBUSY).
        # Built inside it, if empty, under a lock that the processes starting on it take in
        # turn (one may be building in it now).
        return _init_in_place(config, target, foreign)
    with contextlib.suppress(FileNotFoundError):
        if any(target.iterdir()):
            if local_master_key_exists(target):
                return False  # another process initialized it meanwhile
            raise foreign
    try:
        with atomic_directory(target) as building:
            _build_data_dir(config, building, target)
    except FileExistsError:
        if local_master_key_exists(target):
            return False  # another process's directory was renamed into place first
        raise foreign from None
    return True


#: The prefix of the directory an in-place initialization builds in (inside the target).
_IN_PLACE_PREFIX = ".glc-init-in-place-"


def _build_data_dir(config: EncryptionServiceConfig, building: Path, target: Path) -> None:
    """What ``greenlang-crypto init`` creates, in ``building`` (errors name ``target``)."""
    import sqlite3

    from greenlang_crypto._files import output_error
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.exceptions import OutputError

    values = {name: getattr(config, name) for name in config.__dataclass_fields__}
    values["data_dir"] = building
    try:
        if config.key_store_url is None:
            # The keyring lives in the directory too: built with it, whole.
            init_local_service(EncryptionServiceConfig(**values)).close()
        else:
            # The keyring lives in the operator's store: the first service opened on it
            # creates it, once the master key has its final place.
            create_local_master_key(building)
    except OSError as exc:
        raise output_error(target, exc) from exc
    except sqlite3.Error as exc:
        # The embedded key store is a file of the directory being built: a failure is a
        # write that failed (a full disk). SQLite's messages name no data.
        raise OutputError(f"cannot write {target}: {exc}") from exc


def _init_in_place(
    config: EncryptionServiceConfig, target: Path, foreign: ConfigurationError
) -> bool:
    """Initializes the existing, empty directory ``target`` without replacing it.

    Starters take turns on an exclusive lock of the directory: the first builds everything in
    a hidden directory inside it, then moves the entries into place with the master keys
    last (a directory with the key is a whole one); the others then find the key. A hidden
    directory a killed run left is removed under the lock.
    """
    import fcntl
    import secrets
    import shutil

    from greenlang_crypto._files import output_error

    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise output_error(target, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise output_error(target, exc) from exc
        if local_master_key_exists(target):
            return False  # another process initialized it while this one waited
        for entry in target.iterdir():
            if entry.name.startswith(_IN_PLACE_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)  # a killed run's (the lock is ours)
        if any(target.iterdir()):
            raise foreign
        building = target / f"{_IN_PLACE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(building, 0o700)
            _build_data_dir(config, building, target)
            names = sorted(os.listdir(building), key=lambda name: name == "master-keys")
            for name in names:
                _sync_path(building / name)
                os.rename(building / name, target / name)
            os.rmdir(building)
            os.fsync(fd)
        except OSError as exc:
            raise output_error(target, exc) from exc
        finally:
            shutil.rmtree(building, ignore_errors=True)
    finally:
        os.close(fd)  # releases the lock
    return True


def _sync_path(path: Path) -> None:
    """Syncs ``path`` and, for a directory, everything under it (before it is moved)."""
    walk = os.walk(path) if path.is_dir() else [(str(path.parent), [], [path.name])]
    for directory, _dirs, files in walk:
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if path.is_dir():
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _keyring_exists(config: EncryptionServiceConfig) -> bool:
    """Whether the key store ``config`` names holds key versions (opens and closes it)."""
    store = build_key_store(config)
    try:
        return bool(store.versions())
    finally:
        store.close()


def require_initialized(config: EncryptionServiceConfig) -> None:
    """Refuses, before anything is created, to work on an embedded default never initialized.

    Without this check a command run before ``init`` would create an empty key store (and
    the data directory) on its way to failing. Other configurations pass: their provider and
    key store are the operator's.

    Raises:
        ConfigurationError: The local provider's data directory holds no master key.
    """
    if config.provider != "local" or config.key_store_url is not None:
        return
    if not local_master_key_exists(config.data_dir):
        raise ConfigurationError(
            f"{config.data_dir} is not initialized; run `greenlang-crypto init` first"
        )


# -- the service ------------------------------------------------------------------------------


def build_service(
    config: EncryptionServiceConfig,
    *,
    provider: KeyProvider | None = None,
    observers: Iterable[ServiceObserver | TypedServiceObserver] = (),
    per_operation_events: bool = False,
) -> EncryptionService:
    """The encryption service ``config`` describes.

    Args:
        config: The configuration.
        provider: A provider already built (by :func:`build_provider`), else the one
            ``config`` names.
        observers: Service observers (an audit log, a metrics collector).
        per_operation_events: One event per encrypt or decrypt instead of counters.
    """
    from greenlang_crypto.service import EncryptionService

    return EncryptionService(
        config,
        provider=provider,
        observers=observers,
        per_operation_events=per_operation_events,
    )


def init_local_service(config: EncryptionServiceConfig) -> EncryptionService:
    """Creates the embedded default ``config`` describes if missing; a service on it.

    See :meth:`EncryptionService.init_local` (idempotent, safe across processes).
    """
    from greenlang_crypto.service import EncryptionService

    return EncryptionService.init_local(config=config)


# -- observers --------------------------------------------------------------------------------


def open_audit_log(
    config: EncryptionServiceConfig,
    *,
    url: str | _FromEnv | None = FROM_ENV,
    actor: str = "service",
    anchor_urls: Sequence[str] = (),
    each_anchor: bool = False,
    start_thread: bool = True,
    flush_interval: float = 10.0,
    timeout: float = 2.0,
) -> AuditLog:
    """Opens the audit log of ``config``'s data directory (not attached to any service).

    Args:
        config: The configuration (its data directory holds the default SQLite log).
        url: The sink URL; :data:`FROM_ENV` (the default) reads ``$GLC_AUDIT_URL``; None is
            the SQLite log in the data directory.
        actor: Who writes the records of this log.
        anchor_urls: Anchors besides the default one (the file beside a file log); empty:
            the log's default anchors (that file and ``$GLC_AUDIT_ANCHORS``, as one).
        each_anchor: The default anchors as separate anchors, each checked and written on
            its own (what the one-shot commands publish to); ``anchor_urls`` is then unused.
        start_thread: Start the background flusher (a server); one-shot commands write
            synchronously and pass False.
        flush_interval: Seconds between background flushes.
        timeout: Sink write and lock timeout in seconds.

    Raises:
        ConfigurationError: The URL or an anchor URL is not usable.
    """
    from greenlang_crypto.audit import AuditLog, open_audit_sink
    from greenlang_crypto.audit.anchors import configured_anchors, default_anchor, open_anchor

    sink_url = audit_url_from_env() if isinstance(url, _FromEnv) else url
    sink = open_audit_sink(sink_url, config.data_dir, timeout=timeout)
    try:
        anchors: list[Any] | None = None
        if each_anchor:
            anchors = list(configured_anchors(sink))
        elif anchor_urls:
            default = default_anchor(sink)
            anchors = ([default] if default is not None else []) + [
                open_anchor(u) for u in anchor_urls
            ]
        return AuditLog(
            sink,
            flush_interval=flush_interval,
            actor=actor,
            start_thread=start_thread,
            anchors=anchors,
        )
    except BaseException:
        sink.close()
        raise


def build_metrics() -> EncryptionMetrics:
    """A metrics collector, to give the service as an observer and bind to it afterwards."""
    from greenlang_crypto.metrics import EncryptionMetrics

    return EncryptionMetrics()


class WiredService:
    """A service built with an audit log and a metrics collector as its observers.

    Attributes:
        service: The encryption service.
        audit: Its audit log, attached.
        metrics: Its metrics collector, bound to the service and the audit log.
    """

    __slots__ = ("audit", "metrics", "service")

    def __init__(
        self, service: EncryptionService, audit: AuditLog, metrics: EncryptionMetrics
    ) -> None:
        self.service = service
        self.audit = audit
        self.metrics = metrics


def build_observed_service(
    config: EncryptionServiceConfig,
    *,
    audit_url: str | _FromEnv | None = FROM_ENV,
    anchor_urls: Sequence[str] = (),
    per_operation_events: bool = False,
    flush_interval: float = 10.0,
    audit_timeout: float = 2.0,
) -> WiredService:
    """The service with its audit log and metrics collector wired, as a server runs it.

    With ``provider = "aws-kms"`` the KMS provider reports each call to the collector. The
    audit log runs its background flusher. Arguments as for :func:`open_audit_log`.
    """
    metrics = build_metrics()
    audit = open_audit_log(
        config,
        url=audit_url,
        anchor_urls=anchor_urls,
        flush_interval=flush_interval,
        timeout=audit_timeout,
    )
    try:
        provider = None
        if config.provider == "aws-kms":
            # Only then: taking the observer moves KMS call counting to the provider.
            provider = build_provider(config, kms_observer=metrics.kms_observer)
        service = build_service(
            config,
            provider=provider,
            observers=[audit, metrics],
            per_operation_events=per_operation_events,
        )
    except BaseException:
        audit.close()
        raise
    audit.attach(service)
    metrics.bind(service, audit=audit)
    return WiredService(service, audit, metrics)


# -- the lazy form for one-shot commands ------------------------------------------------------


class Composition:
    """What one command needs, opened on first use and closed by :meth:`close`.

    A command that encrypts opens the service only; one that changes keys also opens an
    audit log per audited action. Nothing is opened before it is asked for.

    Args:
        config: The configuration.
        actor: Who the audit records of this command name.
        check_initialized: Refuse an embedded default never initialized (see
            :func:`require_initialized`) before opening the service.
        close_service: Close the service in :meth:`close`. A one-shot command that leaves it
            to the interpreter's exit passes False.
    """

    def __init__(
        self,
        config: EncryptionServiceConfig,
        *,
        actor: str = "service",
        check_initialized: bool = True,
        close_service: bool = True,
    ) -> None:
        self.config = config
        self.actor = actor
        self._check = check_initialized
        self._close_service = close_service
        self._service: EncryptionService | None = None

    @property
    def service(self) -> EncryptionService:
        """The service, built on first access."""
        if self._service is None:
            if self._check:
                require_initialized(self.config)
            self._service = build_service(self.config)
        return self._service

    @property
    def opened_service(self) -> bool:
        """Whether :attr:`service` was built."""
        return self._service is not None

    def open_audit_log(self, *, each_anchor: bool = True, attach: bool = True) -> AuditLog:
        """This command's audit log (``$GLC_AUDIT_URL``), attached to the service.

        Args:
            each_anchor: Publish to each configured anchor on its own (see
                :func:`open_audit_log`).
            attach: Attach it to the service (which opens the service).
        """
        audit = open_audit_log(
            self.config, actor=self.actor, each_anchor=each_anchor, start_thread=False
        )
        if attach:
            try:
                audit.attach(self.service)
            except BaseException:
                audit.sink.close()
                raise
        return audit

    @contextmanager
    def audited(self, action: str) -> Iterator[AuditLog]:
        """Runs a security-relevant action behind an audit intent record, as this actor.

        The intent is written first and must succeed: with the audit sink down the action
        fails closed (``AuditSinkUnavailableError``) and nothing changes. The log is closed
        (its checkpoint published) when the block ends.
        """
        from greenlang_crypto.audit import acting_as

        audit = self.open_audit_log()
        try:
            # One intent and one outcome per action: the service's key-change guard (the
            # audit log) writes nothing more inside an open audited block.
            with acting_as(self.actor), audit.audited(action, self.actor):
                yield audit
        finally:
            audit.close()

    def close(self) -> None:
        """Closes the service if this composition built it (and was asked to)."""
        service, self._service = self._service, None
        if service is not None and self._close_service:
            service.close()

    def __enter__(self) -> Composition:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
