"""The key-provider protocol: where data keys come from and how they are unwrapped.

A provider never returns key bytes to Python callers: the plaintext DEK that a provider
receives (from KMS, or unwrapped locally) is handed to the Rust core at once and comes back as
an opaque :class:`~greenlang_crypto._core.DataKey` handle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from greenlang_crypto._core import DataKey
from greenlang_crypto.context import EncryptionContext

__all__ = [
    "CreatesMasterKeys",
    "EnforcesKeyAllowList",
    "GeneratedDataKey",
    "KeyLimits",
    "KeyProvider",
    "NamesCurrentKey",
    "ProviderHealth",
    "ReportsRotationStatus",
    "RotatesKeyOnDemand",
]


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Usage budget given to every DEK a provider returns.

    Attributes:
        max_messages: Seals allowed under one DEK (at most 2**32, NIST SP 800-38D 8.3).
        max_bytes: Plaintext bytes allowed under one DEK.
    """

    max_messages: int = 2**32
    max_bytes: int = 2**64 - 1


@dataclass(frozen=True, slots=True)
class GeneratedDataKey:
    """A fresh DEK: the Rust handle, its wrapped form, and the wrapping key that made it.

    Attributes:
        key: The plaintext DEK as an opaque Rust handle.
        wrapped: The DEK encrypted under the wrapping key (safe to store).
        key_id: The full id (ARN) of the wrapping key, as reported by the provider.
    """

    key: DataKey = field(repr=False)
    wrapped: bytes = field(repr=False)
    key_id: str


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """Result of a provider health check.

    Attributes:
        ok: Whether the provider answered.
        detail: A short human-readable status (no secrets).
    """

    ok: bool
    detail: str


@runtime_checkable
class KeyProvider(Protocol):
    """Generates and unwraps data keys under a wrapping key (a KMS CMK or a local master key)."""

    #: Short provider name written into inline envelopes (``aws-kms``, ``local``).
    name: str

    def generate_data_key(
        self, key_id: str, context: EncryptionContext, limits: KeyLimits
    ) -> GeneratedDataKey:
        """Creates a new 256-bit DEK bound to ``context`` and wraps it under ``key_id``."""
        ...

    def decrypt_data_key(
        self, key_id: str, wrapped: bytes, context: EncryptionContext, limits: KeyLimits
    ) -> DataKey:
        """Unwraps a DEK made by :meth:`generate_data_key` with the same ``key_id`` and context."""
        ...

    def reencrypt_data_key(
        self, source_key_id: str, wrapped: bytes, dest_key_id: str, context: EncryptionContext
    ) -> bytes:
        """Rewraps a DEK under another wrapping key without exposing it; returns the new blob."""
        ...

    def health(self) -> ProviderHealth:
        """Checks that the provider is reachable (never raises)."""
        ...


# -- optional capabilities ------------------------------------------------------------------
#
# A provider declares an optional feature by implementing the method; callers test for it with
# isinstance() against these runtime-checkable protocols instead of probing names.


@runtime_checkable
class NamesCurrentKey(Protocol):
    """A provider that knows its current wrapping key (the local provider's newest master)."""

    def current_key_id(self) -> str:
        """The wrapping key id new key versions should use."""
        ...


@runtime_checkable
class CreatesMasterKeys(Protocol):
    """A provider that can create a new wrapping key by itself (the local provider)."""

    def create_master_key(self) -> str:
        """Creates a new wrapping key and returns its id."""
        ...


@runtime_checkable
class RotatesKeyOnDemand(Protocol):
    """A provider whose wrapping keys can rotate their key material on demand (AWS KMS)."""

    def rotate_key_on_demand(self, key_id: str) -> None:
        """Rotates the key material of ``key_id``; older material keeps decrypting."""
        ...


@runtime_checkable
class ReportsRotationStatus(Protocol):
    """A provider that reports the automatic rotation status of a wrapping key (AWS KMS)."""

    def rotation_status(self, key_id: str) -> dict[str, Any]:
        """Rotation facts of ``key_id`` (enabled, period, last rotations)."""
        ...


@runtime_checkable
class EnforcesKeyAllowList(Protocol):
    """A provider that checks every key id against its own allow-list before any request.

    The service may then hand it key ids read from inline envelopes that the keyring does not
    list (for example the ARN an alias resolved to).
    """

    enforces_key_allow_list: bool
