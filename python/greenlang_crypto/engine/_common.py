"""Names shared by the service's role objects: argument checks, key-reference kinds, results."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ParamSpec, TypeVar

from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import InvalidArgumentError, InvalidContextError
from greenlang_crypto.keys.store import InstanceRecord, KeyVersion

__all__ = [
    "FLIGHT_STRIPES",
    "MAX_DEK_ID",
    "REFERENCES",
    "ContextLike",
    "KeyReference",
    "RotationResult",
    "ServiceStatus",
    "as_bytes",
    "as_context",
    "check_aad",
    "check_reference",
]

ContextLike = EncryptionContext | Mapping[str, str]

#: Single-flight lock stripes (see :class:`~greenlang_crypto.engine.runtime.Runtime`).
FLIGHT_STRIPES = 256
#: Stored DEK ids are 63-bit (the databases' signed BIGINT); headers may carry any 64 bits.
MAX_DEK_ID = 2**63


class KeyReference(StrEnum):
    """How an envelope names its DEK.

    A plain string with the same value is equal to the member, so every API that takes a
    key reference accepts either.

    Attributes:
        STORED: A DEK id in the key store.
        INLINE: The wrapped DEK inside the envelope.
        BRANCH: A branch key id and salt (the DEK is derived from a branch key).
    """

    STORED = "stored"
    INLINE = "inline"
    BRANCH = "branch"


#: Every key-reference kind, as the plain strings the caches are keyed by.
REFERENCES: tuple[str, ...] = tuple(r.value for r in KeyReference)


def check_reference(reference: str) -> str:
    """Returns ``reference`` as a plain string when it names a key-reference kind.

    Raises:
        InvalidArgumentError: It names none.
    """
    if reference not in REFERENCES:
        raise InvalidArgumentError("key_reference must be 'stored', 'inline' or 'branch'")
    return str(reference)


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


def as_context(context: ContextLike) -> EncryptionContext:
    """``context`` as an :class:`EncryptionContext`.

    Raises:
        InvalidContextError: It is neither a context nor a mapping, or it is invalid.
    """
    if isinstance(context, EncryptionContext):
        return context
    if isinstance(context, Mapping):
        return EncryptionContext.from_mapping(context)
    raise InvalidContextError("context must be an EncryptionContext or a mapping")


def as_bytes(value: object, name: str) -> bytes:
    """``value`` as immutable bytes (a bytearray or memoryview is copied).

    Raises:
        TypeError: It is not bytes-like.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        # Copy so a caller mutating the buffer later cannot alter what was encrypted.
        return bytes(value)
    if value is None:
        raise TypeError(f"{name} must be bytes, not None")
    raise TypeError(f"{name} must be bytes, bytearray or memoryview, not {type(value).__name__}")


def check_aad(associated_data: bytes | None) -> bytes | None:
    """``associated_data`` unchanged.

    Raises:
        TypeError: It is neither bytes nor None.
    """
    if associated_data is None:
        return None
    if not isinstance(associated_data, bytes):
        raise TypeError("associated_data must be bytes or None")
    return associated_data


_P = ParamSpec("_P")
_R = TypeVar("_R")


async def to_thread(func: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """``asyncio.to_thread``, with asyncio imported by the first async call.

    A synchronous process (a one-shot CLI command) then never loads asyncio, which costs
    about a tenth of the service's import time.
    """
    import asyncio

    return await asyncio.to_thread(func, *args, **kwargs)
