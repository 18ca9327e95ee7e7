"""The provider's boto3 KMS clients: one per region, one attempt per call, endpoints checked.

Building a boto3 client does not contact AWS, so none of this needs a KMS server.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.providers._kms_clients import build_clients, check_endpoints

EAST, WEST = "us-east-1", "us-west-2"


def build(regions: list[str], client: Any = None, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "primary_region": EAST,
        "connect_timeout": 1.5,
        "read_timeout": 4.0,
        "endpoint_url": None,
        "urls": {},
        "access_key": "testing",
        "secret_key": "testing",
        "session_token": None,
    }
    options.update(overrides)
    return build_clients(regions, client, **options)


def test_endpoints_are_checked_and_mapped_per_region() -> None:
    urls = check_endpoints("http://127.0.0.1:1", {WEST: "https://kms.example"})
    assert urls == {WEST: "https://kms.example"}
    assert check_endpoints(None, None) == {}


@pytest.mark.parametrize(
    ("endpoint_url", "endpoint_urls", "message"),
    [
        ("ftp://kms.example", None, "endpoint_url must be an http"),
        ("kms.example", None, "endpoint_url must be an http"),
        (None, [("us-east-1", "http://x")], "must map region names"),
        (None, {"not a region": "http://x"}, "keys must be region names"),
        (None, {EAST: 5}, r"endpoint_urls\['us-east-1'\] must be an http"),
    ],
)
def test_bad_endpoints_are_configuration_errors(
    endpoint_url: Any, endpoint_urls: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        check_endpoints(endpoint_url, endpoint_urls)


def test_every_region_gets_a_client_that_makes_one_attempt() -> None:
    clients = build([EAST, WEST], endpoint_url="http://127.0.0.1:1", urls={WEST: "http://w:2"})
    assert {r: c.meta.region_name for r, c in clients.items()} == {EAST: EAST, WEST: WEST}
    assert clients[EAST].meta.endpoint_url == "http://127.0.0.1:1"
    assert clients[WEST].meta.endpoint_url == "http://w:2"
    for client in clients.values():
        config = client.meta.config
        assert config.retries["total_max_attempts"] == 1  # botocore must not retry as well
        assert (config.connect_timeout, config.read_timeout) == (1.5, 4.0)


def test_a_given_client_serves_the_primary_region() -> None:
    mine = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing"
    ).client("kms", region_name=EAST)
    clients = build([EAST, WEST], mine)
    assert clients[EAST] is mine and clients[WEST] is not mine


@pytest.mark.parametrize(
    ("service", "region", "message"),
    [("s3", EAST, "must be a boto3 KMS client"), ("kms", WEST, "primary key's region")],
)
def test_a_given_client_must_be_kms_in_the_primary_region(
    service: str, region: str, message: str
) -> None:
    session: Any = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    other = session.client(service, region_name=region)
    with pytest.raises(ConfigurationError, match=message):
        build([EAST], other)


def test_a_client_boto3_cannot_build_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot build KMS client: ValueError"):
        build([EAST], endpoint_url="http://[broken")
