"""greenlang-crypto: application-level encryption at rest with a Rust core.

The package root imports only the Rust core and pure-Python modules; boto3, SQLAlchemy, FastAPI
and prometheus_client are imported by the submodules that need them, so they stay optional.
"""

from __future__ import annotations

from greenlang_crypto._core import (
    FORMAT_VERSION,
    DataKey,
    DekCache,
    EnvelopeHeader,
    canonical_context,
    parse_envelope,
)
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    CommitmentPolicyError,
    ConfigurationError,
    DataErasedError,
    DecryptionError,
    GreenlangCryptoError,
    InvalidContextError,
    InvalidEnvelopeError,
    KeyRetiredError,
    KeyUsageExceededError,
    KeyVersionUnavailableError,
    KmsError,
    KmsUnavailableError,
    PayloadTooLargeError,
    UnsupportedFormatError,
)

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "CommitmentPolicyError",
    "ConfigurationError",
    "DataErasedError",
    "DataKey",
    "DecryptionError",
    "DekCache",
    "EncryptionContext",
    "EnvelopeHeader",
    "GreenlangCryptoError",
    "InvalidContextError",
    "InvalidEnvelopeError",
    "KeyRetiredError",
    "KeyUsageExceededError",
    "KeyVersionUnavailableError",
    "KmsError",
    "KmsUnavailableError",
    "PayloadTooLargeError",
    "UnsupportedFormatError",
    "__version__",
    "canonical_context",
    "parse_envelope",
]
