"""What a failed AWS KMS call means: worth another attempt, or which typed error to raise.

The error codes are those of the KMS API and the botocore service model. Only outages and
throttling are retried (throttling without counting against the region's circuit breaker);
every other answer ends the call with a typed error whose message names the operation, key and
region but never carries the botocore exception (its response may hold key material).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

import botocore.exceptions as botocore_exc

from greenlang_crypto.exceptions import (
    DecryptionError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyDisabledError,
    KmsUnavailableError,
)
from greenlang_crypto.providers._key_ids import KeyRef
from greenlang_crypto.providers._resilience import Transient

__all__ = ["judge", "status_of"]

_RETRYABLE_CODES: Final = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
# Throttling means the region answered: retry, but do not count it against the region's
# circuit breaker (that is for outages, and opening it would turn load into failover storms).
_THROTTLING_CODES: Final = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
_DISABLED_CODES: Final = frozenset({"DisabledException", "KMSInvalidStateException"})
_DENIED_CODES: Final = frozenset(
    {
        "NotFoundException",
        "AccessDeniedException",
        "InvalidKeyUsageException",
        "IncorrectKeyException",
    }
)
_INVALID_CIPHERTEXT_CODES: Final = frozenset({"InvalidCiphertextException"})


class _Kind(Enum):
    RETRY = "unavailable"
    DISABLED = "disabled"
    DENIED = "denied"
    INVALID_CIPHERTEXT = "invalid_ciphertext"
    OTHER = "error"


@dataclass(frozen=True, slots=True)
class _Failure:
    kind: _Kind
    code: str
    region_down: bool  # counts against the region's circuit breaker


def _classify(exc: Exception) -> _Failure:
    if isinstance(exc, botocore_exc.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _DISABLED_CODES:
            return _Failure(_Kind.DISABLED, code, region_down=False)
        if code in _DENIED_CODES:
            return _Failure(_Kind.DENIED, code, region_down=False)
        if code in _INVALID_CIPHERTEXT_CODES:
            return _Failure(_Kind.INVALID_CIPHERTEXT, code, region_down=False)
        if code in _RETRYABLE_CODES:
            return _Failure(_Kind.RETRY, code, region_down=code not in _THROTTLING_CODES)
        if isinstance(status, int) and status >= 500:
            return _Failure(_Kind.RETRY, code, region_down=True)
        return _Failure(_Kind.OTHER, code, region_down=False)
    # Connect/read timeouts, refused connections, dropped connections, proxy/TLS failures.
    if isinstance(exc, botocore_exc.HTTPClientError | botocore_exc.ConnectionError):
        return _Failure(_Kind.RETRY, type(exc).__name__, region_down=True)
    return _Failure(_Kind.OTHER, type(exc).__name__, region_down=False)


def _permanent_error(operation: str, failure: _Failure, target: KeyRef) -> Exception:
    where = f"KMS {operation} with key {target.raw} in {target.region}"
    if failure.kind is _Kind.DISABLED:
        return KmsKeyDisabledError(f"{where}: key disabled or pending deletion", code=failure.code)
    if failure.kind is _Kind.DENIED:
        return KmsAccessDeniedError(f"{where}: refused ({failure.code})", code=failure.code)
    if failure.kind is _Kind.INVALID_CIPHERTEXT:
        # One opaque error whatever the cause (wrong context, corrupted blob).
        return DecryptionError()
    return KmsError(f"{where} failed ({failure.code})", code=failure.code)


def judge(operation: str, exc: Exception, target: KeyRef) -> Transient | Exception:
    """What one failed attempt of ``operation`` against ``target`` means.

    Returns:
        A :class:`~greenlang_crypto.providers._resilience.Transient` for an outage or
        throttling; otherwise the error to raise: :class:`KmsKeyDisabledError`,
        :class:`KmsAccessDeniedError`, :class:`DecryptionError` (opaque, for a ciphertext KMS
        rejects) or :class:`KmsError`.
    """
    failure = _classify(exc)
    if failure.kind is _Kind.RETRY:
        return Transient(
            failure.code,
            region_down=failure.region_down,
            throttled=failure.code in _THROTTLING_CODES,
        )
    return _permanent_error(operation, failure, target)


def status_of(exc: BaseException | None) -> str:
    """The observer status of a call that ended with ``exc`` (None: it succeeded).

    One of ``ok``, ``unavailable``, ``disabled``, ``denied``, ``invalid_ciphertext``,
    ``invalid_response`` or ``error``.
    """
    if exc is None:
        return "ok"
    if isinstance(exc, KmsUnavailableError):
        return "unavailable"
    if isinstance(exc, KmsKeyDisabledError):
        return "disabled"
    if isinstance(exc, KmsAccessDeniedError):
        return "denied"
    if isinstance(exc, DecryptionError):
        return "invalid_ciphertext"
    if isinstance(exc, KmsError) and exc.code == "InvalidResponse":
        return "invalid_response"
    return "error"
