"""What a failed KMS attempt means: another try (and whether the region is down), or which error.

The exceptions are botocore's own, built as botocore builds them from a KMS answer.
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions as botocore_exc
import pytest

from greenlang_crypto.exceptions import (
    DecryptionError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyDisabledError,
    KmsUnavailableError,
)
from greenlang_crypto.providers._key_ids import KeyRef, parse_key
from greenlang_crypto.providers._kms_errors import judge, status_of
from greenlang_crypto.providers._resilience import Transient

ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DETAIL = "detail-from-the-service-that-must-not-leak"


def target() -> KeyRef:
    ref = parse_key(ARN, None)
    assert ref is not None
    return ref


def client_error(code: str, status: int = 400) -> botocore_exc.ClientError:
    # Only the fields the classification reads; botocore fills in more.
    response: Any = {
        "Error": {"Code": code, "Message": DETAIL},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore_exc.ClientError(response, "Decrypt")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ThrottlingException", 400, Transient("ThrottlingException", False, throttled=True)),
        ("RequestLimitExceeded", 400, Transient("RequestLimitExceeded", False, throttled=True)),
        ("KMSInternalException", 500, Transient("KMSInternalException", True)),
        ("KeyUnavailableException", 500, Transient("KeyUnavailableException", True)),
        ("DependencyTimeoutException", 503, Transient("DependencyTimeoutException", True)),
        ("SomethingNew", 502, Transient("SomethingNew", True)),  # any 5xx is an outage
    ],
)
def test_outages_and_throttling_are_worth_another_attempt(
    code: str, status: int, expected: Transient
) -> None:
    assert judge("Decrypt", client_error(code, status), target()) == expected


@pytest.mark.parametrize(
    "exc",
    [
        botocore_exc.EndpointConnectionError(endpoint_url="https://kms.eu-west-1.amazonaws.com"),
        botocore_exc.ConnectTimeoutError(endpoint_url="https://kms.eu-west-1.amazonaws.com"),
        botocore_exc.ReadTimeoutError(endpoint_url="https://kms.eu-west-1.amazonaws.com"),
    ],
)
def test_connection_failures_mean_the_region_is_down(exc: Exception) -> None:
    assert judge("Decrypt", exc, target()) == Transient(type(exc).__name__, region_down=True)


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        ("DisabledException", KmsKeyDisabledError),
        ("KMSInvalidStateException", KmsKeyDisabledError),
        ("AccessDeniedException", KmsAccessDeniedError),
        ("NotFoundException", KmsAccessDeniedError),
        ("IncorrectKeyException", KmsAccessDeniedError),
        ("ValidationException", KmsError),
    ],
)
def test_answers_become_typed_errors_naming_operation_key_and_region(
    code: str, error_type: type[KmsError]
) -> None:
    error = judge("GenerateDataKey", client_error(code), target())
    assert type(error) is error_type
    assert isinstance(error, KmsError) and error.code == code
    assert "KMS GenerateDataKey" in str(error) and ARN in str(error) and "eu-west-1" in str(error)
    assert DETAIL not in str(error)


def test_a_rejected_ciphertext_is_the_opaque_decryption_error() -> None:
    error = judge("Decrypt", client_error("InvalidCiphertextException"), target())
    assert type(error) is DecryptionError
    assert DETAIL not in str(error) and ARN not in str(error)


def test_anything_else_is_a_plain_kms_error_named_after_its_type() -> None:
    error = judge("Decrypt", ValueError(DETAIL), target())
    assert type(error) is KmsError and error.code == "ValueError"
    assert DETAIL not in str(error)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (None, "ok"),
        (KmsUnavailableError("x", code="c"), "unavailable"),
        (KmsKeyDisabledError("x", code="c"), "disabled"),
        (KmsAccessDeniedError("x", code="c"), "denied"),
        (DecryptionError(), "invalid_ciphertext"),
        (KmsError("x", code="InvalidResponse"), "invalid_response"),
        (KmsError("x", code="Other"), "error"),
        (KeyboardInterrupt(), "error"),
    ],
)
def test_observer_status_of_a_finished_call(exc: BaseException | None, status: str) -> None:
    assert status_of(exc) == status
