"""AwsKmsKeyProvider with botocore's Stubber on its own clients: no KMS server, no network.

Each answer is queued with the exact request the provider must send, so these tests pin the
requests (key ids, context, algorithm) as well as how answers and errors are judged. Retries
through botocore's real HTTP path and fault injection run against moto in
``tests/integration/providers/test_aws_kms.py``.
"""

from __future__ import annotations

import datetime
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber

from greenlang_crypto import _core
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    ConfigurationError,
    DecryptionError,
    InvalidArgumentError,
    InvalidContextError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyDisabledError,
    KmsUnavailableError,
)
from greenlang_crypto.providers import _log_redaction, aws_kms
from greenlang_crypto.providers.aws_kms import AwsKmsKeyProvider
from greenlang_crypto.providers.base import KeyLimits

EAST, WEST = "us-east-1", "us-west-2"
MRK = "mrk-1234abcd12ab34cd56ef1234567890ab"
PRIMARY = f"arn:aws:kms:{EAST}:111122223333:key/{MRK}"
REPLICA = f"arn:aws:kms:{WEST}:111122223333:key/{MRK}"
SINGLE = f"arn:aws:kms:{EAST}:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OUTSIDE = f"arn:aws:kms:{EAST}:111122223333:key/ffffffff-12ab-34cd-56ef-1234567890ab"
CTX = EncryptionContext(tenant_id="acme", data_class="pii")
LIMITS = KeyLimits(max_messages=100, max_bytes=10_000)
WRAPPED = b"\x01\x02\x03wrapped-by-kms"


class Stubs:
    """A provider and an active Stubber on each of its regional clients."""

    def __init__(self, keys: list[str], **options: Any) -> None:
        self.sleeps: list[float] = []
        self.observed: list[tuple[str, str]] = []
        options.setdefault("sleep", self.sleeps.append)
        options.setdefault("rng", random.Random(7))
        options.setdefault(
            "observer", lambda op, status, seconds: self.observed.append((op, status))
        )
        self.provider = AwsKmsKeyProvider(
            keys, aws_access_key_id="testing", aws_secret_access_key="testing", **options
        )
        self.by_region = {r: Stubber(c) for r, c in self.provider.clients.items()}
        for stub in self.by_region.values():
            stub.activate()

    def __getitem__(self, region: str) -> Stubber:
        return self.by_region[region]

    def done(self) -> None:
        for stub in self.by_region.values():
            stub.assert_no_pending_responses()
            stub.deactivate()


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    s = Stubs([PRIMARY, REPLICA, SINGLE])
    yield s
    s.done()


def decrypt_params(key_id: str, blob: bytes = WRAPPED) -> dict[str, Any]:
    return {
        "CiphertextBlob": blob,
        "KeyId": key_id,
        "EncryptionContext": CTX.as_dict(),
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }


def test_generate_pins_the_key_and_context_and_hands_the_key_to_rust(stubs: Stubs) -> None:
    plaintext = os.urandom(32)
    stubs[EAST].add_response(
        "generate_data_key",
        {"CiphertextBlob": WRAPPED, "Plaintext": plaintext, "KeyId": PRIMARY},
        {"KeyId": PRIMARY, "KeySpec": "AES_256", "EncryptionContext": CTX.as_dict()},
    )
    generated = stubs.provider.generate_data_key(PRIMARY, CTX, LIMITS)
    assert generated.key_id == PRIMARY and generated.wrapped == WRAPPED
    assert _core.export_key_bytes(generated.key) == plaintext
    assert stubs.provider.stats["GenerateDataKey.ok"] == 1
    assert stubs.observed == [("GenerateDataKey", "ok")]


def test_decrypt_pins_the_recorded_key_and_the_symmetric_algorithm(stubs: Stubs) -> None:
    plaintext = os.urandom(32)
    stubs[EAST].add_response(
        "decrypt", {"Plaintext": plaintext, "KeyId": SINGLE}, decrypt_params(SINGLE)
    )
    key = stubs.provider.decrypt_data_key(SINGLE, WRAPPED, CTX, LIMITS)
    assert _core.export_key_bytes(key) == plaintext


def test_decrypt_fails_over_to_the_replica_when_the_primary_region_is_down(
    stubs: Stubs,
) -> None:
    plaintext = os.urandom(32)
    stubs[EAST].add_client_error("decrypt", "KMSInternalException", http_status_code=500)
    stubs[WEST].add_response(
        "decrypt", {"Plaintext": plaintext, "KeyId": REPLICA}, decrypt_params(REPLICA)
    )
    key = stubs.provider.decrypt_data_key(PRIMARY, WRAPPED, CTX, LIMITS)
    assert _core.export_key_bytes(key) == plaintext
    assert stubs.provider.stats["failovers"] == 1
    assert stubs.sleeps == []  # the replica was tried in the same round


@pytest.fixture
def two_attempts() -> Iterator[Stubs]:
    s = Stubs([PRIMARY, REPLICA], max_attempts=2, base_delay=0.01, max_delay=0.02)
    yield s
    s.done()


def test_throttling_is_retried_after_a_jittered_sleep(two_attempts: Stubs) -> None:
    plaintext = os.urandom(32)
    two_attempts[EAST].add_client_error(
        "generate_data_key", "ThrottlingException", http_status_code=400
    )
    two_attempts[EAST].add_response(
        "generate_data_key",
        {"CiphertextBlob": WRAPPED, "Plaintext": plaintext, "KeyId": PRIMARY},
    )
    two_attempts.provider.generate_data_key(PRIMARY, CTX, LIMITS)
    assert len(two_attempts.sleeps) == 1 and 0 <= two_attempts.sleeps[0] < 0.01
    assert two_attempts.provider.stats["throttled"] == 1
    assert two_attempts.provider.circuit_state(EAST) == "closed"


def test_generation_never_fails_over_to_a_replica(two_attempts: Stubs) -> None:
    for _ in range(2):
        two_attempts[EAST].add_client_error(
            "generate_data_key", "KMSInternalException", http_status_code=500
        )
    # A call reaching the replica's client would fail as an unstubbed request, not as this.
    with pytest.raises(KmsUnavailableError):
        two_attempts.provider.generate_data_key(PRIMARY, CTX, LIMITS)
    assert two_attempts.provider.stats["attempts"] == 2
    assert two_attempts.provider.stats.get("failovers", 0) == 0


def test_an_outage_past_the_attempt_budget_is_unavailable(two_attempts: Stubs) -> None:
    for _ in range(2):
        two_attempts[EAST].add_client_error(
            "generate_data_key", "ServiceUnavailable", http_status_code=503
        )
    with pytest.raises(KmsUnavailableError) as info:
        two_attempts.provider.generate_data_key(PRIMARY, CTX, LIMITS)
    assert info.value.__context__ is None  # no botocore response kept alive in the chain
    assert two_attempts.observed == [("GenerateDataKey", "unavailable")]


@pytest.mark.parametrize(
    ("code", "error", "status"),
    [
        ("AccessDeniedException", KmsAccessDeniedError, "denied"),
        ("NotFoundException", KmsAccessDeniedError, "denied"),
        ("DisabledException", KmsKeyDisabledError, "disabled"),
        ("KMSInvalidStateException", KmsKeyDisabledError, "disabled"),
        ("InvalidCiphertextException", DecryptionError, "invalid_ciphertext"),
        ("ValidationException", KmsError, "error"),
    ],
)
def test_answers_are_never_retried_and_become_typed_errors(
    stubs: Stubs, code: str, error: type[Exception], status: str
) -> None:
    stubs[EAST].add_client_error("decrypt", code, http_status_code=400)
    with pytest.raises(error) as info:
        stubs.provider.decrypt_data_key(PRIMARY, WRAPPED, CTX, LIMITS)
    assert type(info.value) is error
    assert stubs.sleeps == [] and stubs.provider.stats["attempts"] == 1
    assert stubs.observed == [("Decrypt", status)]


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"Plaintext": b"\x00" * 31, "KeyId": SINGLE}, "not 32 bytes"),
        ({"Plaintext": b"\x00" * 33, "KeyId": SINGLE}, "not 32 bytes"),
        ({"Plaintext": b"\x00" * 32, "KeyId": OUTSIDE}, "KeyId is not"),
        ({"Plaintext": b"\x00" * 32}, "KeyId is not"),
    ],
)
def test_a_malformed_decrypt_answer_is_rejected_without_its_key_bytes(
    stubs: Stubs, answer: dict[str, Any], problem: str
) -> None:
    stubs[EAST].add_response("decrypt", answer)
    with pytest.raises(KmsError, match=problem) as info:
        stubs.provider.decrypt_data_key(SINGLE, WRAPPED, CTX, LIMITS)
    assert info.value.code == "InvalidResponse"
    assert "\\x00" not in str(info.value)
    assert stubs.observed == [("Decrypt", "invalid_response")]


def test_a_generate_answer_without_a_wrapped_key_is_rejected(stubs: Stubs) -> None:
    stubs[EAST].add_response(
        "generate_data_key", {"CiphertextBlob": b"", "Plaintext": os.urandom(32), "KeyId": SINGLE}
    )
    with pytest.raises(KmsError, match="no CiphertextBlob"):
        stubs.provider.generate_data_key(SINGLE, CTX, LIMITS)


def test_a_key_outside_the_allow_list_is_refused_before_any_request(stubs: Stubs) -> None:
    for call in (
        lambda p: p.generate_data_key(OUTSIDE, CTX, LIMITS),
        lambda p: p.decrypt_data_key(OUTSIDE, WRAPPED, CTX, LIMITS),
        lambda p: p.reencrypt_data_key(SINGLE, WRAPPED, OUTSIDE, CTX),
        lambda p: p.describe_key(OUTSIDE),
        lambda p: p.rotate_key_on_demand(f"arn:aws:kms:{WEST}:111122223333:key/{MRK}x"),
    ):
        with pytest.raises(KmsAccessDeniedError) as info:
            call(stubs.provider)
        assert info.value.code == "KeyNotAllowed"
    assert stubs.provider.stats.get("attempts", 0) == 0


@pytest.mark.parametrize("key_id", [None, 42, b"arn"])
def test_a_key_id_must_be_a_str(stubs: Stubs, key_id: object) -> None:
    with pytest.raises(InvalidArgumentError, match="key_id must be a str"):
        stubs.provider.generate_data_key(key_id, CTX, LIMITS)  # type: ignore[arg-type]


@pytest.mark.parametrize("blob", [b"", b"x" * 6145])
def test_a_wrapped_key_kms_could_never_have_made_is_an_opaque_failure(
    stubs: Stubs, blob: bytes
) -> None:
    with pytest.raises(DecryptionError):
        stubs.provider.decrypt_data_key(SINGLE, blob, CTX, LIMITS)
    assert stubs.provider.stats.get("attempts", 0) == 0


def test_the_wrapped_key_and_context_have_checked_types(stubs: Stubs) -> None:
    with pytest.raises(InvalidArgumentError, match="wrapped must be bytes"):
        stubs.provider.decrypt_data_key(SINGLE, "text", CTX, LIMITS)  # type: ignore[arg-type]
    with pytest.raises(InvalidContextError):
        stubs.provider.generate_data_key(SINGLE, {"tenant_id": "a"}, LIMITS)  # type: ignore[arg-type]
    stubs[EAST].add_response(
        "decrypt", {"Plaintext": os.urandom(32), "KeyId": SINGLE}, decrypt_params(SINGLE)
    )
    stubs.provider.decrypt_data_key(SINGLE, bytearray(WRAPPED), CTX, LIMITS)  # type: ignore[arg-type]


def test_reencrypt_runs_in_the_source_region_and_checks_both_key_ids(stubs: Stubs) -> None:
    params = {
        "CiphertextBlob": WRAPPED,
        "SourceKeyId": SINGLE,
        "SourceEncryptionContext": CTX.as_dict(),
        "DestinationKeyId": PRIMARY,
        "DestinationEncryptionContext": CTX.as_dict(),
    }
    stubs[EAST].add_response(
        "re_encrypt",
        {"CiphertextBlob": b"rewrapped", "KeyId": PRIMARY, "SourceKeyId": SINGLE},
        params,
    )
    assert stubs.provider.reencrypt_data_key(SINGLE, WRAPPED, PRIMARY, CTX) == b"rewrapped"
    stubs[EAST].add_response("re_encrypt", {"CiphertextBlob": b"r", "KeyId": SINGLE}, params)
    with pytest.raises(KmsError, match="destination KeyId differs"):
        stubs.provider.reencrypt_data_key(SINGLE, WRAPPED, PRIMARY, CTX)
    stubs[EAST].add_response(
        "re_encrypt", {"CiphertextBlob": b"r", "KeyId": PRIMARY, "SourceKeyId": OUTSIDE}, params
    )
    with pytest.raises(KmsError, match="SourceKeyId differs"):
        stubs.provider.reencrypt_data_key(SINGLE, WRAPPED, PRIMARY, CTX)


WHEN = datetime.datetime(2026, 12, 1, 8, 30, tzinfo=datetime.UTC)


def key_metadata(state: str = "Enabled") -> dict[str, Any]:
    return {
        "KeyMetadata": {
            "KeyId": MRK,
            "Arn": PRIMARY,
            "Enabled": state == "Enabled",
            "KeyState": state,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "Origin": "AWS_KMS",
            "MultiRegion": True,
            "MultiRegionConfiguration": {"MultiRegionKeyType": "PRIMARY"},
            "CreationDate": WHEN,
            "Description": "test key",
        }
    }


def test_describe_key_returns_non_secret_metadata_with_iso_dates(stubs: Stubs) -> None:
    stubs[EAST].add_response("describe_key", key_metadata(), {"KeyId": PRIMARY})
    assert stubs.provider.describe_key(PRIMARY) == {
        "key_id": MRK,
        "arn": PRIMARY,
        "enabled": True,
        "key_state": "Enabled",
        "key_usage": "ENCRYPT_DECRYPT",
        "key_spec": "SYMMETRIC_DEFAULT",
        "origin": "AWS_KMS",
        "multi_region": True,
        "multi_region_key_type": "PRIMARY",
        "creation_date": "2026-12-01T08:30:00+00:00",
        "deletion_date": None,
        "description": "test key",
    }


def test_health_asks_the_primary_key_once_and_never_raises(stubs: Stubs) -> None:
    stubs[EAST].add_response("describe_key", key_metadata(), {"KeyId": PRIMARY})
    assert stubs.provider.health().detail == "kms ok"
    stubs[EAST].add_response("describe_key", key_metadata("Disabled"), {"KeyId": PRIMARY})
    health = stubs.provider.health()
    assert (health.ok, health.detail) == (False, "kms key state is Disabled")
    stubs[EAST].add_client_error("describe_key", "KMSInternalException", http_status_code=500)
    health = stubs.provider.health()
    assert health.ok is False and health.detail.startswith("kms unavailable: ")
    assert stubs.sleeps == []  # one attempt only


def test_rotation_status_follows_every_page(stubs: Stubs) -> None:
    stubs[EAST].add_response(
        "get_key_rotation_status",
        {"KeyRotationEnabled": True, "KeyId": PRIMARY, "RotationPeriodInDays": 365},
        {"KeyId": PRIMARY},
    )
    stubs[EAST].add_response(
        "list_key_rotations",
        {
            "Rotations": [{"RotationDate": WHEN, "RotationType": "AUTOMATIC"}],
            "Truncated": True,
            "NextMarker": "page-2",
        },
        {"KeyId": PRIMARY},
    )
    stubs[EAST].add_response(
        "list_key_rotations",
        {"Rotations": [{"RotationDate": WHEN, "RotationType": "ON_DEMAND"}], "Truncated": False},
        {"KeyId": PRIMARY, "Marker": "page-2"},
    )
    status = stubs.provider.rotation_status(PRIMARY)
    assert status == {
        "key_id": PRIMARY,
        "rotation_enabled": True,
        "rotation_period_days": 365,
        "next_rotation_date": None,
        "on_demand_rotation_start_date": None,
        "rotations": [
            {"rotation_date": "2026-12-01T08:30:00+00:00", "rotation_type": "AUTOMATIC"},
            {"rotation_date": "2026-12-01T08:30:00+00:00", "rotation_type": "ON_DEMAND"},
        ],
    }


def test_rotate_on_demand_names_the_configured_key(stubs: Stubs) -> None:
    stubs[EAST].add_response("rotate_key_on_demand", {"KeyId": SINGLE}, {"KeyId": SINGLE})
    stubs.provider.rotate_key_on_demand(SINGLE)
    assert stubs.observed == [("RotateKeyOnDemand", "ok")]


def test_an_observer_that_raises_never_changes_the_outcome() -> None:
    calls: list[str] = []

    def broken(operation: str, status: str, seconds: float) -> None:
        calls.append(f"{operation}.{status}")
        assert seconds >= 0
        raise RuntimeError("metrics backend down")

    s = Stubs([SINGLE], observer=broken)
    s[EAST].add_response(
        "decrypt", {"Plaintext": os.urandom(32), "KeyId": SINGLE}, decrypt_params(SINGLE)
    )
    s.provider.decrypt_data_key(SINGLE, WRAPPED, CTX, LIMITS)
    s.done()
    assert calls == ["Decrypt.ok"]


def test_introspection_names_the_primary_and_each_region(stubs: Stubs) -> None:
    assert stubs.provider.primary_key_id == PRIMARY
    assert set(stubs.provider.clients) == {EAST, WEST}
    assert stubs.provider.clients[WEST].meta.region_name == WEST
    assert stubs.provider.circuit_state(WEST) == "closed"
    with pytest.raises(InvalidArgumentError, match="eu-west-1"):
        stubs.provider.circuit_state("eu-west-1")
    assert stubs.provider.name == "aws-kms"
    assert stubs.provider.enforces_key_allow_list is True


@pytest.mark.parametrize(
    "options",
    [
        {"keys": []},
        {"keys": [SINGLE, SINGLE]},
        {"connect_timeout": 0},
        {"read_timeout": float("nan")},
        {"max_attempts": 0},
        {"base_delay": 0.5, "max_delay": 0.1},
        {"region": "Mars"},
        {"endpoint_url": "kms.example"},
        {"aws_secret_access_key": None},
        {"observer": "not callable"},
        {"clock": 1.0},
        {"sleep": None, "rng": "not random"},
        {"client": object()},
    ],
)
def test_every_bad_option_is_a_configuration_error_at_construction(
    options: dict[str, Any],
) -> None:
    kwargs: dict[str, Any] = {
        "keys": [SINGLE],
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        **options,
    }
    with pytest.raises(ConfigurationError):
        AwsKmsKeyProvider(**kwargs)


def test_the_log_filter_lock_is_still_reachable_from_this_module() -> None:
    assert aws_kms._FILTER_LOCK is _log_redaction._FILTER_LOCK  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no_such_name"):
        aws_kms.no_such_name  # type: ignore[attr-defined]  # noqa: B018
