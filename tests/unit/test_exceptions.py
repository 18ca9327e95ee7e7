"""The exception hierarchy: one root, stable reasons, the ValueError family, typed attributes."""

from __future__ import annotations

import os

import pytest

from greenlang_crypto import _core, exceptions
from greenlang_crypto.exceptions import (
    AuditSinkUnavailableError,
    CommitmentPolicyError,
    ConfigurationError,
    DataErasedError,
    DecryptionError,
    GreenlangCryptoError,
    InternalError,
    InvalidArgumentError,
    InvalidContextError,
    InvalidEnvelopeError,
    InvalidKeyError,
    JobIncompleteError,
    KeyNotFoundError,
    KeyRetiredError,
    KeyStateError,
    KeyStoreUnavailableError,
    KeyUsageExceededError,
    KeyVersionUnavailableError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyDisabledError,
    KmsUnavailableError,
    OutputError,
    PayloadTooLargeError,
    TenantErasingError,
    UnavailableError,
    UnsupportedFormatError,
)

#: The reason each class reports; metrics labels and audit records depend on these strings.
REASONS: dict[type[GreenlangCryptoError], str] = {
    GreenlangCryptoError: "other",
    InternalError: "internal",
    InvalidArgumentError: "other",
    InvalidKeyError: "other",
    InvalidContextError: "other",
    PayloadTooLargeError: "other",
    ConfigurationError: "other",
    DecryptionError: "authentication",
    InvalidEnvelopeError: "malformed",
    CommitmentPolicyError: "uncommitted",
    UnsupportedFormatError: "unsupported_format",
    KeyUsageExceededError: "key_usage_exceeded",
    KeyVersionUnavailableError: "key_version_unavailable",
    KeyRetiredError: "key_retired",
    KeyNotFoundError: "key_not_found",
    DataErasedError: "erased",
    KeyStateError: "key_state",
    TenantErasingError: "erasing",
    KmsError: "kms",
    KmsUnavailableError: "kms",
    KmsKeyDisabledError: "kms",
    KmsAccessDeniedError: "kms",
    AuditSinkUnavailableError: "audit_unavailable",
    UnavailableError: "unavailable",
    KeyStoreUnavailableError: "key_store_unavailable",
    OutputError: "output",
    JobIncompleteError: "job_incomplete",
}


def test_all_names_every_exception_class_of_the_module() -> None:
    defined = {
        name
        for name, value in vars(exceptions).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert defined == set(exceptions.__all__)
    assert {cls.__name__ for cls in REASONS} == defined


@pytest.mark.parametrize(
    ("cls", "reason"), REASONS.items(), ids=lambda v: getattr(v, "__name__", v)
)
def test_each_class_reports_its_stable_reason(cls: type[GreenlangCryptoError], reason: str) -> None:
    assert issubclass(cls, GreenlangCryptoError)
    assert cls.reason == reason


def test_argument_errors_are_value_errors_and_runtime_failures_are_not() -> None:
    value_errors = {
        InvalidArgumentError,
        InvalidKeyError,
        InvalidContextError,
        PayloadTooLargeError,
        ConfigurationError,
    }
    for cls in REASONS:
        assert issubclass(cls, ValueError) == (cls in value_errors), cls.__name__


def test_every_failed_authentication_is_caught_as_one_decryption_error() -> None:
    assert issubclass(InvalidEnvelopeError, DecryptionError)
    assert issubclass(UnsupportedFormatError, InvalidEnvelopeError)
    assert str(DecryptionError()) == "decryption failed"
    assert str(InvalidEnvelopeError()) == "decryption failed"
    assert str(DecryptionError("truncated header")) == "truncated header"


def test_missing_and_retired_versions_name_the_version_and_nothing_else() -> None:
    missing = KeyVersionUnavailableError(7)
    assert missing.key_version == 7
    assert str(missing) == "key version 7 is not available in this keyring"
    retired = KeyRetiredError(2, 5)
    assert (retired.key_version, retired.min_version) == (2, 5)
    assert str(retired) == "key version 2 is retired (minimum decryption version is 5)"
    assert not isinstance(missing, DecryptionError)
    assert not isinstance(retired, DecryptionError)


def test_kms_errors_carry_an_optional_code() -> None:
    assert KmsError("boom").code is None
    denied = KmsAccessDeniedError("no", code="KeyNotAllowed")
    assert denied.code == "KeyNotAllowed" and str(denied) == "no"
    for cls in (KmsUnavailableError, KmsKeyDisabledError, KmsAccessDeniedError):
        assert issubclass(cls, KmsError)


def test_outages_that_may_pass_share_one_base() -> None:
    assert issubclass(KeyStoreUnavailableError, UnavailableError)
    assert issubclass(JobIncompleteError, UnavailableError)
    assert not issubclass(KmsUnavailableError, UnavailableError)
    job = JobIncompleteError("range 3 is leased", retry_after=12.5)
    assert job.retry_after == 12.5 and str(job) == "range 3 is leased"
    assert JobIncompleteError("x").retry_after is None


def test_the_rust_core_raises_these_same_classes() -> None:
    with pytest.raises(InvalidKeyError) as bad_key:
        _core.AESGCM(b"short")
    assert type(bad_key.value) is InvalidKeyError
    with pytest.raises(DecryptionError) as bad_tag:
        _core.AESGCM(os.urandom(32)).decrypt(os.urandom(12), b"\x00" * 32, None)
    assert type(bad_tag.value) is DecryptionError
