"""EncryptionServiceConfig: built from keyword arguments, environment variables or TOML.

Everything is validated at construction, so a misconfiguration fails when the service starts,
not at its first encryption.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from greenlang_crypto._urls import redact_url
from greenlang_crypto.exceptions import ConfigurationError

__all__ = ["EncryptionServiceConfig", "default_data_dir"]

_PROVIDERS = ("local", "aws-kms")
_KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]{1,128}")


def _tenant_keys(raw: object) -> dict[str, str]:
    """``{tenant: KMS key ARN}`` from a mapping or ``"t1=arn,t2=arn"``, validated."""
    if isinstance(raw, str):
        pairs = []
        for item in (s.strip() for s in raw.split(",")):
            if not item:
                continue
            tenant, sep, arn = item.partition("=")
            if not sep:
                raise ConfigurationError("tenant_kms_keys entries are tenant=key-ARN")
            pairs.append((tenant.strip(), arn.strip()))
        raw = dict(pairs)
    if not isinstance(raw, Mapping):
        raise ConfigurationError("tenant_kms_keys must map tenant ids to KMS key ARNs")
    out: dict[str, str] = {}
    for tenant, arn in raw.items():
        if not isinstance(tenant, str) or not tenant or not isinstance(arn, str):
            raise ConfigurationError("tenant_kms_keys must map tenant ids to KMS key ARNs")
        # A full key ARN, never an alias: a tenant key must name one key for good, so the
        # rewrap can tell a tenant's DEKs apart and its deletion can be scheduled.
        if not _KMS_KEY_ARN.fullmatch(arn):
            raise ConfigurationError("tenant_kms_keys values must be KMS key ARNs")
        out[tenant] = arn
    return out


_REFERENCES = ("stored", "inline", "branch")
_BRANCH_SCOPES = ("service", "tenant")
#: Commitment policies, named as the AWS Encryption SDK names its own.
COMMITMENT_POLICIES = (
    "require_encrypt_allow_decrypt",
    "require_encrypt_require_decrypt",
    "forbid_encrypt_allow_decrypt",
)


def default_data_dir() -> Path:
    """``$GLC_DATA_DIR``, else ``~/.greenlang-crypto``."""
    return Path(os.environ.get("GLC_DATA_DIR") or Path.home() / ".greenlang-crypto")


def _as_bool(raw: object) -> bool:
    """A boolean from TOML (a bool) or the environment (``1``/``true``/``yes``/``on``...)."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("not a boolean")


#: The rotation policy's durations (seconds; ``None`` or 0: off).
_POLICY_PERIODS = (
    "rotation_period_seconds",
    "reencrypt_within_seconds",
    "retire_after_seconds",
    "index_rotation_period_seconds",
    "branch_rotation_period_seconds",
)


def _policy_period(name: str, value: object) -> float | None:
    """A policy duration as a positive float, or ``None`` for off (``None`` or 0).

    Raises:
        ConfigurationError: Not a number, negative, or not finite.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0 (0: off)")
    return seconds or None


@dataclass(frozen=True)
class EncryptionServiceConfig:
    """Configuration of :class:`~greenlang_crypto.service.EncryptionService`.

    Attributes:
        provider: ``local`` (embedded default) or ``aws-kms``.
        data_dir: Directory of the local master keys and the default SQLite key store.
        key_store_url: ``sqlite:///...`` or ``postgresql://...``; default under ``data_dir``.
        kms_key_ids: KMS key ARNs, primary first, then multi-region replicas.
        kms_region: Region for a bare key id or alias.
        kms_endpoint_url: Endpoint override (tests, VPC endpoints).
        key_reference: ``stored`` (compact envelopes, DEK in the key store), ``inline``, or
            ``branch`` (DEKs derived from branch keys: KMS calls independent of the tenant
            count; see :mod:`greenlang_crypto.keys.branch`).
        branch_key_scope: With branch keys, ``tenant`` (one branch key per tenant; deleting
            it crypto-shreds the tenant) or ``service`` (one shared branch key).
        key_cache_url: ``redis://...`` of a shared cache of wrapped key records for a fleet
            (optional; never holds a plaintext key).
        cache_ttl_seconds: DEK cache TTL; at most 300 s by policy.
        cache_max_entries: DEK cache entry bound.
        max_messages_per_dek: Seals per DEK before a new one is fetched (<= 2**32).
        max_plaintext_bytes: Largest plaintext accepted; checked before any KMS call. Streams
            (``encrypt_stream``, ``encrypt_file``) are not bound by it.
        stream_max_bytes: Largest plaintext of one stream (default 2**36 bytes); a regular
            file above it is refused before any KMS call, any other source once it passes it.
        refresh_ahead_fraction: Fraction of the TTL after which a DEK is replaced early.
        keyring_refresh_seconds: Bound on how long a key change made by another process
            (rotation, retirement, rewrap) takes to reach this one; never more than the
            cache TTL. On PostgreSQL changes normally arrive at once (LISTEN/NOTIFY) and this
            is the polling fallback. It also sets the self-fencing bound (``2 * refresh + 1``
            seconds: an instance that could not confirm its keyring for that long refreshes
            before it seals again) and the liveness window retirement uses
            (``3 * refresh + 2``); see docs/KEYRING.md. 0 turns the background refresh, the
            heartbeat and the fence off (benchmarks and single-process tools only). A value
            above the cache TTL is lowered to the TTL.
        key_store_pool_size: PostgreSQL: most connections one process holds to the key
            store (shared by its threads), plus one for LISTEN.
        key_store_transaction_pooler: PostgreSQL: the key store URL points at PgBouncer (or
            another pooler) in transaction mode: no server-side prepared statements, and the
            keyring polls instead of listening.
        commitment_policy: ``require_encrypt_allow_decrypt`` (default: write key-committing
            envelope format v2, read v1 and v2), ``require_encrypt_require_decrypt`` (also
            refuse every envelope that does not commit to its key, with
            :class:`~greenlang_crypto.exceptions.CommitmentPolicyError`; set it once
            re-encryption has moved all data to v2) or ``forbid_encrypt_allow_decrypt``
            (write format v1, for a fleet whose older instances cannot read v2 yet).
        tenant_kms_keys: AWS KMS only: tenants that get a KMS key of their own, as
            ``{tenant_id: key ARN}`` (``GLC_TENANT_KMS_KEYS="t1=arn:...,t2=arn:..."``). Their
            DEKs and branch keys are generated under that key instead of the version's, stay
            on it through rewraps, and ``erase_tenant(..., schedule_kms_key_deletion=True)``
            schedules its deletion, so even a backup of the key store cannot bring the
            tenant's data back once the key is gone. The keys join the provider's allow-list.
        rotation_period_seconds: Rotation policy: the autopilot
            (:func:`greenlang_crypto.sqlalchemy.autopilot.run_autopilot_once`) rotates once
            the primary key version is older than this many seconds (``31536000``: a year).
            ``None`` or 0: off (the default; rotate by hand).
        reencrypt_within_seconds: Rotation policy: how long after a rotation data may still
            be under an older version; past it the autopilot reports re-encryption as
            overdue. ``None`` or 0: no deadline.
        retire_after_seconds: Rotation policy: the grace period after a rotation before the
            autopilot retires the older versions (only once no registered column has a row
            under them and no live instance seals under them). ``None`` or 0: the autopilot
            never retires.
        index_rotation_period_seconds: Rotation policy for blind-index root keys, as
            ``rotation_period_seconds`` (``None`` or 0: off). The autopilot re-indexes the
            registered columns under the new index key and retires the old one after
            ``retire_after_seconds``, as for data keys.
        branch_rotation_period_seconds: Rotation policy for branch keys (``key_reference
            = "branch"``): the autopilot gives every scope whose active branch key is older
            than this a new one (``None`` or 0: off). Data under older branch keys keeps
            decrypting; it moves with the next data-key rotation's re-encryption.
    """

    provider: str = "local"
    data_dir: Path = field(default_factory=default_data_dir)
    key_store_url: str | None = None
    kms_key_ids: tuple[str, ...] = ()
    kms_region: str | None = None
    kms_endpoint_url: str | None = None
    key_reference: str = "stored"
    branch_key_scope: str = "tenant"
    key_cache_url: str | None = None
    cache_ttl_seconds: float = 300.0
    cache_max_entries: int = 1000
    max_messages_per_dek: int = 2**24
    max_plaintext_bytes: int = 64 * 1024 * 1024
    stream_max_bytes: int = 2**36
    refresh_ahead_fraction: float = 0.9
    keyring_refresh_seconds: float = 5.0
    key_store_pool_size: int = 4
    key_store_transaction_pooler: bool = False
    commitment_policy: str = "require_encrypt_allow_decrypt"
    tenant_kms_keys: Mapping[str, str] = field(default_factory=dict)
    rotation_period_seconds: float | None = None
    reencrypt_within_seconds: float | None = None
    retire_after_seconds: float | None = None
    index_rotation_period_seconds: float | None = None
    branch_rotation_period_seconds: float | None = None

    def __repr__(self) -> str:
        # URLs may carry a password (postgresql://user:pw@host, redis://:pw@host): never shown.
        shown = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name.endswith("_url") and isinstance(value, str):
                value = redact_url(value)
            shown.append(f"{spec.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "kms_key_ids", tuple(self.kms_key_ids))
        if self.provider not in _PROVIDERS:
            raise ConfigurationError(f"provider must be one of {_PROVIDERS}")
        if self.provider == "aws-kms" and not self.kms_key_ids:
            raise ConfigurationError("provider aws-kms needs at least one kms_key_ids entry")
        if self.key_reference not in _REFERENCES:
            raise ConfigurationError(f"key_reference must be one of {_REFERENCES}")
        object.__setattr__(self, "tenant_kms_keys", _tenant_keys(self.tenant_kms_keys))
        if self.tenant_kms_keys and self.provider != "aws-kms":
            raise ConfigurationError("tenant_kms_keys needs provider aws-kms")
        if self.commitment_policy not in COMMITMENT_POLICIES:
            raise ConfigurationError(f"commitment_policy must be one of {COMMITMENT_POLICIES}")
        if self.branch_key_scope not in _BRANCH_SCOPES:
            raise ConfigurationError(f"branch_key_scope must be one of {_BRANCH_SCOPES}")
        cache_url = self.key_cache_url
        if cache_url is not None and not cache_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError("key_cache_url must be redis://, rediss:// or unix://")
        if not 0 < self.cache_ttl_seconds <= 300:
            raise ConfigurationError("cache_ttl_seconds must be in (0, 300]")
        if not 1 <= self.cache_max_entries <= 1_000_000:
            raise ConfigurationError("cache_max_entries must be in 1..1000000")
        if not 1 <= self.max_messages_per_dek <= 2**32:
            raise ConfigurationError("max_messages_per_dek must be in 1..2**32 (SP 800-38D)")
        if not 1 <= self.max_plaintext_bytes <= 2**36 - 32:
            raise ConfigurationError("max_plaintext_bytes must be in 1..2**36-32")
        # 2**48 bytes is far inside the format's limit (2**32 segments of at least 64 KiB).
        if not 0 <= self.stream_max_bytes <= 2**48:
            raise ConfigurationError("stream_max_bytes must be in 0..2**48")
        if not 0.1 <= self.refresh_ahead_fraction <= 1.0:
            raise ConfigurationError("refresh_ahead_fraction must be in [0.1, 1.0]")
        if not 0 <= self.keyring_refresh_seconds <= 300:
            raise ConfigurationError("keyring_refresh_seconds must be in [0, 300] (0: off)")
        if self.keyring_refresh_seconds > self.cache_ttl_seconds:
            # A cached key must not outlive the bound on seeing its retirement.
            object.__setattr__(self, "keyring_refresh_seconds", self.cache_ttl_seconds)
        if not 1 <= self.key_store_pool_size <= 100:
            raise ConfigurationError("key_store_pool_size must be in 1..100")
        for name in _POLICY_PERIODS:
            object.__setattr__(self, name, _policy_period(name, getattr(self, name)))
        url = self.key_store_url
        if url is not None and not url.startswith(("sqlite:///", "postgresql", "postgres://")):
            raise ConfigurationError("key_store_url must be sqlite:/// or postgresql://")

    @property
    def rotation_policy(self) -> dict[str, float | None]:
        """The rotation policy's durations by setting name (seconds; ``None``: off)."""
        return {name: getattr(self, name) for name in _POLICY_PERIODS}

    @property
    def resolved_key_store_url(self) -> str:
        """The key store URL, defaulting to SQLite in the data directory."""
        return self.key_store_url or f"sqlite:///{self.data_dir / 'keystore.db'}"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EncryptionServiceConfig:
        """Builds a config from a flat mapping, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigurationError(f"unknown configuration keys: {sorted(unknown)}")
        converted: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            raw = values[f.name]
            try:
                if f.name == "kms_key_ids":
                    if isinstance(raw, str):
                        raw = [s.strip() for s in raw.split(",") if s.strip()]
                    converted[f.name] = tuple(raw)
                elif f.name in (
                    "cache_ttl_seconds",
                    "refresh_ahead_fraction",
                    "keyring_refresh_seconds",
                ):
                    converted[f.name] = float(raw)
                elif f.name in (
                    "cache_max_entries",
                    "max_messages_per_dek",
                    "max_plaintext_bytes",
                    "stream_max_bytes",
                    "key_store_pool_size",
                ):
                    converted[f.name] = int(raw)
                elif f.name in _POLICY_PERIODS:
                    converted[f.name] = None if raw is None or raw == "" else float(raw)
                elif f.name == "tenant_kms_keys":
                    converted[f.name] = _tenant_keys(raw)
                elif f.name == "key_store_transaction_pooler":
                    converted[f.name] = _as_bool(raw)
                elif f.name == "data_dir":
                    converted[f.name] = Path(raw)
                else:
                    converted[f.name] = str(raw)
            except (TypeError, ValueError):
                raise ConfigurationError(f"invalid value for {f.name}") from None
        return cls(**converted)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EncryptionServiceConfig:
        """Reads ``GLC_*`` variables (for example ``GLC_PROVIDER``, ``GLC_KMS_KEY_IDS``)."""
        env = os.environ if environ is None else environ
        values = {
            f.name: env[f"GLC_{f.name.upper()}"]
            for f in fields(cls)
            if f"GLC_{f.name.upper()}" in env
        }
        return cls.from_mapping(values)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> EncryptionServiceConfig:
        """Reads the ``[greenlang_crypto]`` table (or the top level) of a TOML file."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read configuration {path}: {exc}") from None
        table = data.get("greenlang_crypto", data)
        return cls.from_mapping(table)
