"""Data keys never reach a log handler through botocore's DEBUG records.

The records are made the way botocore makes them (``Response body:\\n%r`` with the raw body
bytes, request parameters as a dict) and go through the real logging machinery.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest

from greenlang_crypto.providers._log_redaction import (
    BOTOCORE_BODY_LOGGERS,
    REDACTED,
    PlaintextRedactingFilter,
    install_botocore_log_redaction,
    redact,
)

DEK = bytes(range(7, 39))  # 32 bytes, as KMS returns them
DEK_B64 = base64.b64encode(DEK).decode()
WRAPPED_B64 = base64.b64encode(b"wrapped-dek-blob").decode()
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def kms_body() -> bytes:
    """A GenerateDataKey answer as it comes off the wire."""
    return json.dumps(
        {"CiphertextBlob": WRAPPED_B64, "KeyId": KEY_ARN, "Plaintext": DEK_B64}
    ).encode()


def test_a_botocore_response_body_record_is_scrubbed_before_any_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    install_botocore_log_redaction()
    caplog.set_level(logging.DEBUG, logger="botocore.parsers")
    logging.getLogger("botocore.parsers").debug("Response body:\n%r", kms_body())
    assert "Response body" in caplog.text  # the record did arrive
    assert DEK_B64 not in caplog.text and REDACTED in caplog.text
    # Only the data key goes: what is needed to debug the call stays.
    assert KEY_ARN in caplog.text and WRAPPED_B64 in caplog.text
    (record,) = [r for r in caplog.records if r.name == "botocore.parsers"]
    assert record.args is None and DEK_B64 not in str(record.msg)


def test_request_and_parsed_answer_dicts_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    install_botocore_log_redaction()
    caplog.set_level(logging.DEBUG, logger="botocore.endpoint")
    logger = logging.getLogger("botocore.endpoint")
    logger.debug("Response: %s", {"Plaintext": DEK, "KeyId": KEY_ARN})
    logger.debug("Response: %r", {"Plaintext": DEK_B64})
    assert caplog.text.count(REDACTED) == 2
    assert DEK_B64 not in caplog.text and repr(DEK) not in caplog.text
    assert repr(DEK)[2:-1] not in caplog.text  # not even the escaped bytes without b'...'


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"Plaintext": DEK_B64}),
        repr({"Plaintext": DEK}),
        repr({"Plaintext": b'it\'s "quoted" \\ and \x00'}),
        json.dumps(json.dumps({"Plaintext": DEK_B64})),  # JSON inside a JSON string
        repr(json.dumps({"Plaintext": DEK_B64, "q": "it's"}).encode()),
        "{'Plaintext' : '" + DEK_B64 + "'}",
    ],
)
def test_redact_removes_the_value_in_every_quoting(text: str) -> None:
    out = redact(text)
    assert REDACTED in out
    assert DEK_B64 not in out and "quoted" not in out and repr(DEK)[2:-1] not in out


def test_redact_leaves_other_fields_alone() -> None:
    text = json.dumps({"KeyId": KEY_ARN, "CiphertextBlob": WRAPPED_B64})
    assert redact(text) == text


def test_records_without_a_plaintext_field_keep_their_args() -> None:
    record = logging.LogRecord("botocore.x", logging.DEBUG, __file__, 1, "n=%d", (5,), None)
    assert PlaintextRedactingFilter().filter(record) is True
    assert record.args == (5,) and record.msg == "n=%d"


def test_a_malformed_record_is_let_through_untouched() -> None:
    record = logging.LogRecord("botocore.x", logging.DEBUG, __file__, 1, "%d %d", ("x",), None)
    assert PlaintextRedactingFilter().filter(record) is True
    assert record.args == ("x",)


def test_install_covers_existing_botocore_children_once() -> None:
    child = logging.getLogger("botocore.test_log_redaction_child")
    unrelated = logging.getLogger("botocore_lookalike.test_log_redaction")
    # A redacting filter put there some other way already does the job.
    already = logging.getLogger("botocore.test_log_redaction_already")
    already.addFilter(PlaintextRedactingFilter())
    install_botocore_log_redaction()
    install_botocore_log_redaction()
    for name in (*BOTOCORE_BODY_LOGGERS, child.name, already.name):
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, PlaintextRedactingFilter) for f in filters) == 1, name
    assert not any(isinstance(f, PlaintextRedactingFilter) for f in unrelated.filters)
