"""AwsKmsKeyProvider against a moto KMS server over HTTP: retries, faults, log redaction.

Faults are injected with botocore ``before-send`` hooks on the provider's real clients, so
every attempt goes through botocore's request, parsing and error paths (unlike ``Stubber``).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import socket
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import botocore.exceptions
import pytest
from botocore.awsrequest import AWSResponse

from greenlang_crypto import hazmat
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    ConfigurationError,
    DecryptionError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyDisabledError,
    KmsUnavailableError,
)
from greenlang_crypto.providers.aws_kms import (
    AwsKmsKeyProvider,
    PlaintextRedactingFilter,
    install_botocore_log_redaction,
)
from greenlang_crypto.providers.base import KeyLimits, KeyProvider

pytestmark = pytest.mark.integration

CTX = EncryptionContext(tenant_id="tenant-a", data_class="pii", extra={"purpose": "test"})
OTHER_CTX = EncryptionContext(tenant_id="tenant-b", data_class="pii", extra={"purpose": "test"})
LIMITS = KeyLimits(max_messages=1000, max_bytes=10**6)
EAST, WEST = "us-east-1", "us-west-2"
CLOSED_ENDPOINT = "http://127.0.0.1:1"
FAKE_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


# --- fault injection helpers -----------------------------------------------------------------


class _Raw:
    """The minimal raw-stream object AWSResponse.content reads."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def fake_response(request: Any, status: int, body: dict[str, Any]) -> AWSResponse:
    headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "injected"}
    return AWSResponse(request.url, status, headers, _Raw(json.dumps(body).encode()))


def error_body(code: str, message: str = "injected") -> dict[str, Any]:
    return {"__type": code, "message": message}


class Injector:
    """A before-send hook: the first ``times`` sends get ``fault``; later ones go through.

    ``fault`` returns an AWSResponse to short-circuit the send, or an exception to raise.
    ``times=None`` injects forever.
    """

    def __init__(
        self, fault: Callable[[Any], AWSResponse | Exception] | None, times: int | None = None
    ) -> None:
        self.fault = fault
        self.times = times
        self.calls = 0

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        self.calls += 1
        if self.fault is None or (self.times is not None and self.calls > self.times):
            return None
        outcome = self.fault(request)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def hook(provider: AwsKmsKeyProvider, region: str, operation: str, injector: Injector) -> Injector:
    provider.clients[region].meta.events.register(f"before-send.kms.{operation}", injector)
    return injector


def kms_error(code: str, status: int = 400) -> Callable[[Any], AWSResponse]:
    return lambda request: fake_response(request, status, error_body(code))


def secrets_of(*keys: Any) -> list[bytes]:
    out = []
    for k in keys:
        raw = k if isinstance(k, bytes) else hazmat.export_key_bytes(k)
        out += [raw, base64.b64encode(raw)]
    return out


def assert_chain_clean(exc: BaseException, secrets: list[bytes]) -> None:
    """No secret in the error, its args, its cause/context chain, or its frames' locals."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts = [str(current), repr(current), repr(current.args)]
        for text in texts:
            for secret in secrets:
                assert secret.decode("latin-1") not in text
                assert repr(secret) not in text
        for arg in current.args:
            assert arg not in secrets
        tb = current.__traceback__
        while tb is not None:
            # The test's own frame legitimately holds the secret it injected.
            own_frame = tb.tb_frame.f_code.co_filename == __file__
            for value in () if own_frame else tb.tb_frame.f_locals.values():
                assert not (isinstance(value, bytes) and value in secrets)
                if isinstance(value, dict):
                    assert not any(v in secrets for v in value.values() if isinstance(v, bytes))
            tb = tb.tb_next
        current = current.__cause__ or current.__context__


# --- basic behaviour -----------------------------------------------------------------------


def test_provider_satisfies_protocol(make_provider: Callable[..., AwsKmsKeyProvider]) -> None:
    provider = make_provider()
    assert isinstance(provider, KeyProvider)
    assert provider.name == "aws-kms"


def test_round_trip(kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]) -> None:
    provider = make_provider()
    generated = provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert generated.key_id == kms_keys.primary_arn
    assert isinstance(generated.wrapped, bytes) and generated.wrapped
    key = provider.decrypt_data_key(generated.key_id, generated.wrapped, CTX, LIMITS)
    assert hazmat.export_key_bytes(key) == hazmat.export_key_bytes(generated.key)
    assert len(hazmat.export_key_bytes(key)) == 32
    assert provider.stats["GenerateDataKey.ok"] == 1
    assert provider.stats["Decrypt.ok"] == 1


def test_round_trip_single_region_key(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider()
    generated = provider.generate_data_key(kms_keys.single_arn, CTX, LIMITS)
    assert generated.key_id == kms_keys.single_arn
    key = provider.decrypt_data_key(kms_keys.single_arn, generated.wrapped, CTX, LIMITS)
    assert hazmat.export_key_bytes(key) == hazmat.export_key_bytes(generated.key)


def test_bare_key_id_with_region(kms_keys: Any, make_provider: Callable[..., Any]) -> None:
    bare = kms_keys.single_arn.split(":key/")[1]
    provider = make_provider(keys=[bare], region=EAST)
    generated = provider.generate_data_key(bare, CTX, LIMITS)
    assert generated.key_id == kms_keys.single_arn
    provider.decrypt_data_key(generated.key_id, generated.wrapped, CTX, LIMITS)


def test_alias_resolves_and_decrypts(kms_keys: Any, make_provider: Callable[..., Any]) -> None:
    kms_keys.client().create_alias(AliasName="alias/greenlang", TargetKeyId=kms_keys.single_arn)
    provider = make_provider(keys=["alias/greenlang"], region=EAST)
    generated = provider.generate_data_key("alias/greenlang", CTX, LIMITS)
    assert generated.key_id == kms_keys.single_arn
    provider.decrypt_data_key(generated.key_id, generated.wrapped, CTX, LIMITS)
    # A fresh provider learns the alias target through DescribeKey.
    fresh = make_provider(keys=["alias/greenlang"], region=EAST)
    fresh.decrypt_data_key(generated.key_id, generated.wrapped, CTX, LIMITS)


def test_wrong_context_fails_at_kms(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider()
    generated = provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    replica = hook(provider, WEST, "Decrypt", Injector(None))
    with pytest.raises(DecryptionError) as info:
        provider.decrypt_data_key(generated.key_id, generated.wrapped, OTHER_CTX, LIMITS)
    assert str(info.value) == "decryption failed"
    assert replica.calls == 0  # an answer from KMS is not a reason to fail over
    assert provider.stats["attempts"] == 2  # one generate, one decrypt: not retried
    assert_chain_clean(info.value, secrets_of(generated.key))


def test_corrupted_blob_is_decryption_error(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider()
    generated = provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    blob = bytearray(generated.wrapped)
    blob[-1] ^= 1
    with pytest.raises(DecryptionError):
        provider.decrypt_data_key(generated.key_id, bytes(blob), CTX, LIMITS)
    with pytest.raises(DecryptionError):
        provider.decrypt_data_key(generated.key_id, b"", CTX, LIMITS)


def test_fake_enforces_encryption_context(kms_keys: Any) -> None:
    """Meta-test: the wrong-context tests mean something only if moto checks the context."""
    client = kms_keys.client()
    resp = client.generate_data_key(
        KeyId=kms_keys.single_arn, KeySpec="AES_256", EncryptionContext=CTX.as_dict()
    )
    for bad in (OTHER_CTX.as_dict(), {}, {**CTX.as_dict(), "purpose": "Test"}):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.decrypt(
                CiphertextBlob=resp["CiphertextBlob"],
                KeyId=kms_keys.single_arn,
                EncryptionContext=bad,
            )
        assert info.value.response["Error"]["Code"] == "InvalidCiphertextException"
    ok = client.decrypt(
        CiphertextBlob=resp["CiphertextBlob"],
        KeyId=kms_keys.single_arn,
        EncryptionContext=CTX.as_dict(),
    )
    assert ok["Plaintext"] == resp["Plaintext"]


def test_key_outside_allow_list_is_refused_without_a_call(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider(keys=[kms_keys.primary_arn])
    generated = make_provider().generate_data_key(kms_keys.single_arn, CTX, LIMITS)
    for call in (
        lambda: provider.generate_data_key(kms_keys.single_arn, CTX, LIMITS),
        lambda: provider.decrypt_data_key(kms_keys.single_arn, generated.wrapped, CTX, LIMITS),
        lambda: provider.decrypt_data_key(FAKE_ARN, generated.wrapped, CTX, LIMITS),
    ):
        with pytest.raises(KmsAccessDeniedError) as info:
            call()
        assert info.value.code == "KeyNotAllowed"
    assert provider.stats.get("attempts", 0) == 0


def test_moto_access_denied_for_wrong_pinned_key(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider()
    generated = provider.generate_data_key(kms_keys.single_arn, CTX, LIMITS)
    with pytest.raises(KmsAccessDeniedError) as info:
        provider.decrypt_data_key(kms_keys.primary_arn, generated.wrapped, CTX, LIMITS)
    assert info.value.code == "AccessDeniedException"


def test_reencrypt(kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]) -> None:
    provider = make_provider()
    generated = provider.generate_data_key(kms_keys.single_arn, CTX, LIMITS)
    blob = provider.reencrypt_data_key(
        kms_keys.single_arn, generated.wrapped, kms_keys.primary_arn, CTX
    )
    assert blob != generated.wrapped
    key = provider.decrypt_data_key(kms_keys.primary_arn, blob, CTX, LIMITS)
    assert hazmat.export_key_bytes(key) == hazmat.export_key_bytes(generated.key)
    with pytest.raises(DecryptionError):
        provider.reencrypt_data_key(
            kms_keys.single_arn, generated.wrapped, kms_keys.primary_arn, OTHER_CTX
        )


def test_describe_rotation_and_health(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider()
    info = provider.describe_key(kms_keys.primary_arn)
    assert info["arn"] == kms_keys.primary_arn
    assert info["key_state"] == "Enabled"
    assert info["multi_region"] is True
    assert info["multi_region_key_type"] == "PRIMARY"
    assert provider.rotation_status(kms_keys.single_arn)["rotations"] == []
    provider.rotate_key_on_demand(kms_keys.single_arn)
    status = provider.rotation_status(kms_keys.single_arn)
    assert status["rotation_enabled"] is False
    assert [r["rotation_type"] for r in status["rotations"]] == ["ON_DEMAND"]
    health = provider.health()
    assert health.ok, health.detail


# --- multi-Region failover and circuit breaker -------------------------------------------


def test_decrypt_fails_over_to_replica_when_primary_unreachable(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    generated = make_provider().generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    provider = make_provider(endpoint_urls={EAST: CLOSED_ENDPOINT})
    start = time.monotonic()
    key = provider.decrypt_data_key(kms_keys.primary_arn, generated.wrapped, CTX, LIMITS)
    assert time.monotonic() - start < 2
    assert hazmat.export_key_bytes(key) == hazmat.export_key_bytes(generated.key)
    assert provider.stats["failovers"] == 1
    # Generation does not fail over: fail closed.
    with pytest.raises(KmsUnavailableError) as info:
        provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert info.value.code == "EndpointConnectionError"
    assert not provider.health().ok


def test_decrypt_envelope_recorded_under_replica_arn(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    generated = make_provider().generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    provider = make_provider()
    key = provider.decrypt_data_key(kms_keys.replica_arn, generated.wrapped, CTX, LIMITS)
    assert hazmat.export_key_bytes(key) == hazmat.export_key_bytes(generated.key)


def test_circuit_breaker_opens_and_half_opens(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    now = [1000.0]
    provider = make_provider(
        keys=[kms_keys.primary_arn, kms_keys.replica_arn],
        failure_threshold=2,
        reset_timeout=30.0,
        clock=lambda: now[0],
    )
    generated = provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    primary = hook(
        provider,
        EAST,
        "Decrypt",
        Injector(lambda r: botocore.exceptions.EndpointConnectionError(endpoint_url=r.url)),
    )
    replica = hook(provider, WEST, "Decrypt", Injector(None))

    def decrypt() -> None:
        key = provider.decrypt_data_key(kms_keys.primary_arn, generated.wrapped, CTX, LIMITS)
        assert hazmat.export_key_bytes(key) == hazmat.export_key_bytes(generated.key)

    decrypt()
    decrypt()
    assert (primary.calls, replica.calls) == (2, 2)
    assert provider.circuit_state(EAST) == "open"
    decrypt()  # primary skipped while open
    assert (primary.calls, replica.calls) == (2, 3)
    now[0] += 30
    assert provider.circuit_state(EAST) == "half_open"
    decrypt()  # one probe fails: open again
    assert (primary.calls, replica.calls) == (3, 4)
    assert provider.circuit_state(EAST) == "open"
    decrypt()
    assert primary.calls == 3
    now[0] += 30
    primary.fault = None  # the region is back
    decrypt()  # the probe succeeds and closes the circuit
    assert (primary.calls, replica.calls) == (4, 5)
    assert provider.circuit_state(EAST) == "closed"
    assert provider.stats["circuit_opened"] == 2


def test_open_circuit_fails_fast_when_no_region_left(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider(keys=[kms_keys.primary_arn], failure_threshold=1)
    primary = hook(
        provider,
        EAST,
        "GenerateDataKey",
        Injector(lambda r: botocore.exceptions.EndpointConnectionError(endpoint_url=r.url)),
    )
    with pytest.raises(KmsUnavailableError):
        provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert primary.calls == 1
    with pytest.raises(KmsUnavailableError):
        provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert primary.calls == 1
    assert provider.health().ok is False


# --- transient errors (throttling, timeouts, 5xx) are retried within the deadline -----------


def test_throttling_once_then_success(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    sleeps: list[float] = []
    provider = make_provider(sleep=sleeps.append)
    injector = hook(
        provider, EAST, "GenerateDataKey", Injector(kms_error("ThrottlingException"), times=1)
    )
    generated = provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert generated.key_id == kms_keys.primary_arn
    assert injector.calls == 2
    assert len(sleeps) == 1
    assert provider.stats["retries"] == 1
    assert provider.stats["throttled"] == 1


def test_throttling_always_gives_typed_error_with_jittered_backoff(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    sleeps: list[float] = []
    events: list[tuple[str, str, float]] = []
    provider = make_provider(
        sleep=sleeps.append,
        max_attempts=6,
        base_delay=0.1,
        max_delay=1.0,
        rng=random.Random(7),
        observer=lambda *e: events.append(e),
    )
    injector = hook(provider, EAST, "GenerateDataKey", Injector(kms_error("ThrottlingException")))
    start = time.monotonic()
    with pytest.raises(KmsUnavailableError) as info:
        provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert time.monotonic() - start < 3.0
    assert info.value.code == "ThrottlingException"
    assert injector.calls == 6  # exactly max_attempts: botocore itself did not retry
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0]
    assert len(sleeps) == 5
    assert all(0 <= s <= c for s, c in zip(sleeps, ceilings, strict=True))
    assert sleeps != ceilings and len(set(sleeps)) == 5  # full jitter, not fixed delays
    assert [(op, status) for op, status, _ in events] == [("GenerateDataKey", "unavailable")]
    assert provider.circuit_state(EAST) == "closed"  # throttling is not an outage


def test_overall_deadline_bounds_retries(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider(
        max_attempts=20, base_delay=0.05, max_delay=0.2, deadline=0.4, failure_threshold=100
    )
    injector = hook(provider, EAST, "GenerateDataKey", Injector(kms_error("ThrottlingException")))
    start = time.monotonic()
    with pytest.raises(KmsUnavailableError):
        provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    elapsed = time.monotonic() - start
    assert elapsed < 0.4 + 0.3
    assert 1 < injector.calls < 20


TRANSIENT_FAULTS: dict[str, Callable[[Any], AWSResponse | Exception]] = {
    "read-timeout": lambda r: botocore.exceptions.ReadTimeoutError(endpoint_url=r.url),
    "connect-timeout": lambda r: botocore.exceptions.ConnectTimeoutError(endpoint_url=r.url),
    "connection-refused": lambda r: botocore.exceptions.EndpointConnectionError(endpoint_url=r.url),
    "KMSInternalException-500": kms_error("KMSInternalException", 500),
    "DependencyTimeoutException": kms_error("DependencyTimeoutException", 503),
    "KeyUnavailableException": kms_error("KeyUnavailableException", 500),
    "plain-503": lambda r: fake_response(r, 503, {}),
}


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS.values(), ids=TRANSIENT_FAULTS.keys())
def test_transient_fault_retried_then_success(
    fault: Callable[[Any], Any], kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider()
    injector = hook(provider, EAST, "GenerateDataKey", Injector(fault, times=2))
    provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert injector.calls == 3


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS.values(), ids=TRANSIENT_FAULTS.keys())
def test_transient_fault_persistent_gives_unavailable(
    fault: Callable[[Any], Any], kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider(max_attempts=3)
    injector = hook(provider, EAST, "GenerateDataKey", Injector(fault))
    start = time.monotonic()
    with pytest.raises(KmsUnavailableError) as info:
        provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert time.monotonic() - start < 3.0
    assert injector.calls == 3
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.fixture
def blackhole_endpoint() -> Iterator[str]:
    """An endpoint that accepts TCP connections but never answers: a real read timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)  # the kernel completes handshakes; nobody ever reads or replies
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_real_read_timeout_is_bounded(
    kms_keys: Any, blackhole_endpoint: str, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider(
        keys=[kms_keys.primary_arn],
        endpoint_url=blackhole_endpoint,
        read_timeout=0.2,
        max_attempts=2,
    )
    start = time.monotonic()
    with pytest.raises(KmsUnavailableError) as info:
        provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert time.monotonic() - start < 1.5
    assert info.value.code == "ReadTimeoutError"
    assert provider.stats["attempts"] == 2


def test_decrypt_fails_over_on_real_read_timeout(
    kms_keys: Any, blackhole_endpoint: str, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    generated = make_provider().generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    provider = make_provider(endpoint_urls={EAST: blackhole_endpoint}, read_timeout=0.2)
    key = provider.decrypt_data_key(generated.key_id, generated.wrapped, CTX, LIMITS)
    assert hazmat.export_key_bytes(key) == hazmat.export_key_bytes(generated.key)
    assert provider.stats["failovers"] == 1


# --- permanent errors are not retried -------------------------------------------------------

PERMANENT = [
    ("DisabledException", KmsKeyDisabledError),
    ("KMSInvalidStateException", KmsKeyDisabledError),
    ("NotFoundException", KmsAccessDeniedError),
    ("AccessDeniedException", KmsAccessDeniedError),
    ("InvalidKeyUsageException", KmsAccessDeniedError),
    ("IncorrectKeyException", KmsAccessDeniedError),
    ("InvalidCiphertextException", DecryptionError),
    ("ValidationException", KmsError),
]


@pytest.mark.parametrize(("code", "error"), PERMANENT, ids=[c for c, _ in PERMANENT])
def test_permanent_error_on_decrypt_not_retried(
    code: str,
    error: type[Exception],
    kms_keys: Any,
    make_provider: Callable[..., AwsKmsKeyProvider],
) -> None:
    provider = make_provider()
    generated = provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    primary = hook(provider, EAST, "Decrypt", Injector(kms_error(code)))
    replica = hook(provider, WEST, "Decrypt", Injector(None))
    with pytest.raises(error) as info:
        provider.decrypt_data_key(generated.key_id, generated.wrapped, CTX, LIMITS)
    assert type(info.value) is error
    assert (primary.calls, replica.calls) == (1, 0)
    if isinstance(info.value, KmsError):
        assert info.value.code == code
    assert info.value.__context__ is None
    assert_chain_clean(info.value, secrets_of(generated.key))


@pytest.mark.parametrize(("code", "error"), PERMANENT[:6], ids=[c for c, _ in PERMANENT[:6]])
def test_permanent_error_on_generate_not_retried(
    code: str,
    error: type[Exception],
    kms_keys: Any,
    make_provider: Callable[..., AwsKmsKeyProvider],
) -> None:
    sleeps: list[float] = []
    provider = make_provider(sleep=sleeps.append)
    injector = hook(provider, EAST, "GenerateDataKey", Injector(kms_error(code)))
    with pytest.raises(error):
        provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert injector.calls == 1
    assert sleeps == []


def test_disabled_key_health(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    # moto's DisableKey accepts only the bare key id.
    kms_keys.client().disable_key(KeyId=kms_keys.primary_arn.split(":key/")[1])
    health = make_provider().health()
    assert not health.ok and "Disabled" in health.detail


# --- defensive checks on KMS answers --------------------------------------------------------


def _generate_answer(key_id: str, plaintext: bytes) -> Callable[[Any], AWSResponse]:
    body = {
        "KeyId": key_id,
        "Plaintext": base64.b64encode(plaintext).decode(),
        "CiphertextBlob": base64.b64encode(b"w" * 120).decode(),
    }
    return lambda request: fake_response(request, 200, body)


def _decrypt_answer(key_id: str, plaintext: bytes) -> Callable[[Any], AWSResponse]:
    body = {
        "KeyId": key_id,
        "Plaintext": base64.b64encode(plaintext).decode(),
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }
    return lambda request: fake_response(request, 200, body)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_generate_rejects_wrong_plaintext_length(
    length: int, kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider()
    bogus = bytes(range(1, length + 1))
    hook(provider, EAST, "GenerateDataKey", Injector(_generate_answer(kms_keys.primary_arn, bogus)))
    with pytest.raises(KmsError) as info:
        provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    assert info.value.code == "InvalidResponse"
    assert "32 bytes" in str(info.value)
    if bogus:
        assert_chain_clean(info.value, secrets_of(bogus))
    assert provider.stats["GenerateDataKey.invalid_response"] == 1


def test_generate_rejects_other_key_id(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider()
    dek = bytes(range(32))
    for other in (kms_keys.single_arn, kms_keys.replica_arn, FAKE_ARN, "alias/x", ""):
        injector = hook(provider, EAST, "GenerateDataKey", Injector(_generate_answer(other, dek)))
        with pytest.raises(KmsError) as info:
            provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
        assert info.value.code == "InvalidResponse"
        assert_chain_clean(info.value, secrets_of(dek))
        provider.clients[EAST].meta.events.unregister("before-send.kms.GenerateDataKey", injector)


@pytest.mark.parametrize("case", ["short", "other-key"])
def test_decrypt_rejects_bad_answer(
    case: str, kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    provider = make_provider()
    generated = provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    if case == "short":
        answer = _decrypt_answer(kms_keys.primary_arn, b"s" * 31)
        secret = b"s" * 31
    else:
        secret = bytes(range(32))
        answer = _decrypt_answer(kms_keys.single_arn, secret)
    hook(provider, EAST, "Decrypt", Injector(answer))
    with pytest.raises(KmsError) as info:
        provider.decrypt_data_key(generated.key_id, generated.wrapped, CTX, LIMITS)
    assert info.value.code == "InvalidResponse"
    assert_chain_clean(info.value, secrets_of(secret, generated.key))


# --- no DEK in botocore's DEBUG logs --------------------------------------------------------


def _all_botocore_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="botocore")
    caplog.set_level(logging.DEBUG)


def test_debug_logs_contain_no_dek(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider], caplog: pytest.LogCaptureFixture
) -> None:
    provider = make_provider()
    _all_botocore_debug(caplog)
    generated = provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    key = provider.decrypt_data_key(generated.key_id, generated.wrapped, CTX, LIMITS)
    raw = hazmat.export_key_bytes(key)
    b64 = base64.b64encode(raw).decode()
    bodies = [
        r for r in caplog.records if r.name == "botocore.parsers" and "Response body" in r.msg
    ]
    assert len(bodies) >= 2, "botocore did not log response bodies; the test proves nothing"
    assert all("REDACTED" in r.getMessage() for r in bodies)
    for record in caplog.records:
        message = record.getMessage()
        assert b64 not in message
        assert raw.decode("latin-1") not in message
        assert repr(raw)[2:-1] not in message
    assert b64 not in caplog.text


def test_without_the_filter_botocore_would_leak(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider], caplog: pytest.LogCaptureFixture
) -> None:
    """Meta-test for the log redaction: it is what keeps the DEK out, not luck."""
    provider = make_provider()
    parsers = logging.getLogger("botocore.parsers")
    removed = [f for f in parsers.filters if isinstance(f, PlaintextRedactingFilter)]
    for f in removed:
        parsers.removeFilter(f)
    try:
        _all_botocore_debug(caplog)
        generated = provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
        b64 = base64.b64encode(hazmat.export_key_bytes(generated.key)).decode()
        assert b64 in caplog.text
    finally:
        install_botocore_log_redaction()
    assert any(isinstance(f, PlaintextRedactingFilter) for f in parsers.filters)


def test_redaction_of_dict_reprs_and_escaped_json() -> None:
    raw = b"\x00'\"\\abc" + bytes(range(200, 225))
    b64 = base64.b64encode(raw).decode()
    flt = PlaintextRedactingFilter()
    cases: list[tuple[str, tuple[Any, ...]]] = [
        ("params: %s", ({"Plaintext": raw, "KeyId": "k"},)),
        ("body: %r", (json.dumps({"Plaintext": b64}).encode(),)),
        ("body: %r", (json.dumps({"Plaintext": b64, "q": "it's"}).encode(),)),
        ("escaped: %s", (json.dumps(json.dumps({"Plaintext": b64})),)),
        ("dict: %r", ({"Plaintext": b64},)),
    ]
    for msg, args in cases:
        record = logging.LogRecord("botocore.x", logging.DEBUG, __file__, 1, msg, args, None)
        assert flt.filter(record)
        text = record.getMessage()
        assert "REDACTED" in text, text
        assert b64 not in text and repr(raw) not in text and repr(raw)[2:-1] not in text
    plain = logging.LogRecord("botocore.x", logging.DEBUG, __file__, 1, "n=%d", (5,), None)
    flt.filter(plain)
    assert plain.args == (5,)


def test_redaction_installed_idempotently(make_provider: Callable[..., Any]) -> None:
    make_provider()
    make_provider()
    for name in ("botocore", "botocore.parsers", "botocore.endpoint"):
        flts = logging.getLogger(name).filters
        assert sum(isinstance(f, PlaintextRedactingFilter) for f in flts) == 1


# --- unreachable KMS at start ---------------------------------------------------------------


def test_unreachable_kms_at_start() -> None:
    start = time.monotonic()
    provider = AwsKmsKeyProvider(
        [FAKE_ARN],
        endpoint_url=CLOSED_ENDPOINT,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        max_attempts=2,
        base_delay=0.001,
        max_delay=0.01,
        deadline=2.0,
    )
    assert time.monotonic() - start < 2.0
    with pytest.raises(KmsUnavailableError) as info:
        provider.generate_data_key(FAKE_ARN, CTX, LIMITS)
    assert info.value.__context__ is None
    health = provider.health()
    assert health.ok is False
    assert "unavailable" in health.detail


def test_package_root_does_not_import_boto3() -> None:
    code = "import sys, greenlang_crypto, greenlang_crypto.providers; print('boto3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- configuration and observers ------------------------------------------------------------

BAD_OPTIONS: list[dict[str, Any]] = [
    {"keys": []},
    {"keys": "arn:aws:kms:us-east-1:123456789012:key/x"},
    {"keys": ["not-a-key"]},
    {"keys": ["alias/no-region"]},
    {"keys": [FAKE_ARN, FAKE_ARN]},
    {"connect_timeout": 0},
    {"read_timeout": -1},
    {"read_timeout": float("nan")},
    {"max_attempts": 0},
    {"max_attempts": True},
    {"max_attempts": 2.5},
    {"base_delay": -0.1},
    {"base_delay": 0.5, "max_delay": 0.1},
    {"deadline": float("inf")},
    {"failure_threshold": 0},
    {"reset_timeout": 0},
    {"region": "Mars"},
    {"endpoint_url": "127.0.0.1:5000"},
    {"endpoint_urls": {"us-east-1": "ftp://x"}},
    {"aws_access_key_id": "only-half"},
    {"observer": 3},
    {"client": object()},
]


@pytest.mark.parametrize("options", BAD_OPTIONS)
def test_invalid_configuration(options: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"keys": [FAKE_ARN], **options}
    with pytest.raises(ConfigurationError):
        AwsKmsKeyProvider(**kwargs)


def test_injected_client_is_used_for_primary_region(kms_keys: Any) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "kms",
        region_name=EAST,
        endpoint_url=kms_keys.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}),
    )
    provider = AwsKmsKeyProvider(
        [kms_keys.primary_arn],
        client=client,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    assert provider.clients[EAST] is client
    provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    with pytest.raises(ConfigurationError):
        AwsKmsKeyProvider([kms_keys.replica_arn], client=client)


def test_observer_errors_never_escape(
    kms_keys: Any, make_provider: Callable[..., AwsKmsKeyProvider]
) -> None:
    calls: list[tuple[Any, ...]] = []

    def broken(*args: Any) -> None:
        calls.append(args)
        raise RuntimeError("metrics backend down")

    provider = make_provider(observer=broken)
    generated = provider.generate_data_key(kms_keys.primary_arn, CTX, LIMITS)
    provider.decrypt_data_key(generated.key_id, generated.wrapped, CTX, LIMITS)
    # The observer was really called (and raised) for both calls, and neither call failed.
    assert len(calls) >= 2


def test_non_context_argument_rejected(make_provider: Callable[..., AwsKmsKeyProvider]) -> None:
    provider = make_provider()
    with pytest.raises(ValueError):
        provider.generate_data_key(FAKE_ARN, types.SimpleNamespace(), LIMITS)  # type: ignore[arg-type]
