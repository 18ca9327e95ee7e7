"""Exception hierarchy of greenlang-crypto.

Every error the library raises derives from :class:`GreenlangCryptoError`. Messages never contain
key bytes, plaintext or raw encryption-context values, and an authentication failure is one
opaque :class:`DecryptionError` whatever the cause (wrong key, wrong context, tampered bytes),
so an attacker learns nothing from which check failed.

The Rust core raises these same classes (it imports them from this module), so there is a
single hierarchy across the Rust/Python boundary.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuditSinkUnavailableError",
    "CommitmentPolicyError",
    "ConfigurationError",
    "DataErasedError",
    "DecryptionError",
    "GreenlangCryptoError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidContextError",
    "InvalidEnvelopeError",
    "InvalidKeyError",
    "JobIncompleteError",
    "KeyNotFoundError",
    "KeyRetiredError",
    "KeyStateError",
    "KeyStoreUnavailableError",
    "KeyUsageExceededError",
    "KeyVersionUnavailableError",
    "KmsAccessDeniedError",
    "KmsError",
    "KmsKeyDisabledError",
    "KmsUnavailableError",
    "OutputError",
    "PayloadTooLargeError",
    "TenantErasingError",
    "UnavailableError",
    "UnsupportedFormatError",
]


class GreenlangCryptoError(Exception):
    """Root of every exception raised by greenlang-crypto.

    Attributes:
        reason: A short, stable, non-secret category for metrics and audit records
            (``authentication``, ``malformed``, ``kms``...); subclasses set their own.
    """

    reason: ClassVar[str] = "other"


class InternalError(GreenlangCryptoError):
    """An internal invariant failed (for example a Rust panic caught at the boundary)."""

    reason = "internal"


class InvalidArgumentError(GreenlangCryptoError, ValueError):
    """An argument is out of range (a nonce of the wrong length, a bad limit, ...)."""


class InvalidKeyError(GreenlangCryptoError, ValueError):
    """Key material has the wrong length or cannot be loaded."""


class InvalidContextError(GreenlangCryptoError, ValueError):
    """The encryption context is not acceptable (wrong types, too large, empty key...)."""


class PayloadTooLargeError(GreenlangCryptoError, ValueError):
    """The plaintext exceeds the configured maximum; raised before any KMS call."""


class DecryptionError(GreenlangCryptoError):
    """Decryption failed. Deliberately carries no detail about why."""

    reason = "authentication"

    def __init__(self, message: str = "decryption failed") -> None:
        super().__init__(message)


class InvalidEnvelopeError(DecryptionError):
    """The ciphertext is not a well-formed envelope (truncated, bad length, trailing bytes).

    Only the envelope's public structure is described; this never says anything about keys or
    the authentication tag.
    """

    reason = "malformed"


class UnsupportedFormatError(InvalidEnvelopeError):
    """The envelope uses a format version or algorithm outside the allow-list."""

    reason = "unsupported_format"


class KeyUsageExceededError(GreenlangCryptoError):
    """A data key reached its message or byte budget (NIST SP 800-38D, 8.3)."""

    reason = "key_usage_exceeded"


class KeyVersionUnavailableError(GreenlangCryptoError):
    """The envelope names a key version that this keyring does not have.

    Distinct from :class:`DecryptionError` so operators can tell a missing key from tampering;
    the version number comes from the envelope's public header, so it reveals nothing secret.
    """

    reason = "key_version_unavailable"

    def __init__(self, key_version: int) -> None:
        super().__init__(f"key version {key_version} is not available in this keyring")
        self.key_version = key_version


class KeyRetiredError(GreenlangCryptoError):
    """The envelope's key version is below the minimum decryption version."""

    reason = "key_retired"

    def __init__(self, key_version: int, min_version: int) -> None:
        super().__init__(
            f"key version {key_version} is retired (minimum decryption version is {min_version})"
        )
        self.key_version = key_version
        self.min_version = min_version


class CommitmentPolicyError(DecryptionError):
    """The envelope does not commit to its key, and the commitment policy requires it.

    Raised under ``commitment_policy="require_encrypt_require_decrypt"`` for envelope format
    v1 values without a key commitment (stored and branch references written before v2).
    Re-encrypt them (``db reencrypt``) before turning the policy on. The format version is
    public, so this error is no decryption oracle.
    """

    reason = "uncommitted"

    def __init__(
        self, message: str = "the envelope does not commit to its key (commitment policy)"
    ) -> None:
        super().__init__(message)


class KeyNotFoundError(DecryptionError):
    """The key an envelope names is not in the key store (unknown, forged or deleted).

    A :class:`DecryptionError`, with the same message: a reference is read from the
    envelope, which anyone can write, so the error never names the id it looked for and does
    not tell a forged reference from a missing key by its text.
    """

    reason = "key_not_found"


class DataErasedError(KeyNotFoundError):
    """The value's key was erased on purpose (crypto-shredded): the data cannot come back.

    Raised when the key store records the key's deletion (a tenant erased with
    ``erase_tenant`` / ``keys erase``, or its branch keys deleted with ``keys branch-delete``),
    in every key-reference mode that can be erased (stored DEKs and branch keys); an unknown
    reference stays a plain :class:`KeyNotFoundError`. The message names no key or tenant.
    """

    reason = "erased"

    def __init__(self, message: str = "decryption failed: the data was erased") -> None:
        super().__init__(message)


class KeyStateError(GreenlangCryptoError):
    """A key operation is not allowed in the key's current state."""

    reason = "key_state"


class TenantErasingError(KeyStateError):
    """An encryption for a tenant whose keys are being erased was refused.

    Between the two phases of ``erase_tenant`` no instance encrypts for the tenant, so no
    write is acknowledged under a key about to be destroyed. Once the erasure completes,
    encryptions for the tenant succeed again under fresh keys; an erasure interrupted between
    its phases keeps refusing until it is run again. The message names no tenant.
    """

    reason = "erasing"

    def __init__(
        self, message: str = "encryption refused: the tenant's data is being erased"
    ) -> None:
        super().__init__(message)


class ConfigurationError(GreenlangCryptoError, ValueError):
    """The configuration is invalid; raised at construction, not at first use."""


class KmsError(GreenlangCryptoError):
    """A key-management call failed in a way that retrying will not fix."""

    reason = "kms"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class KmsUnavailableError(KmsError):
    """KMS could not be reached or kept throttling within the retry deadline."""


class KmsKeyDisabledError(KmsError):
    """The KMS key is disabled or pending deletion; the library fails closed."""


class KmsAccessDeniedError(KmsError):
    """KMS refused the call (access denied, not found, wrong key usage)."""


class AuditSinkUnavailableError(GreenlangCryptoError):
    """The audit sink could not record an event; security-relevant actions fail closed."""

    reason = "audit_unavailable"


class UnavailableError(GreenlangCryptoError):
    """A dependency outside the process is down; the same call may succeed later.

    The CLI exits with code 3 for these (2 for every other typed error), so a scheduler can
    tell "retry later" from "fix the command".
    """

    reason = "unavailable"


class KeyStoreUnavailableError(UnavailableError):
    """The key store (SQLite file or PostgreSQL) could not be reached within the retry bound.

    Also raised by ``encrypt`` when this instance could not confirm its keyring within the
    fence bound: sealing on a view that may be stale could use a retired key version. The
    database error is chained as ``__cause__``; its message is not repeated here.
    """

    reason = "key_store_unavailable"


class OutputError(GreenlangCryptoError):
    """Writing a result failed (disk full, permission denied, a read-only file system).

    Nothing partial is left under the output name; the OS error is chained as ``__cause__``.
    """

    reason = "output"


class JobIncompleteError(UnavailableError):
    """A bulk job could not finish every range in this run (another worker holds a lease).

    Attributes:
        retry_after: Seconds after which a rerun can take the remaining ranges over.
    """

    reason = "job_incomplete"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
