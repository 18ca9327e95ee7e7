"""boto3 KMS clients for the provider: one per region, with botocore's own retries off.

The provider retries by itself (see ``_resilience``); botocore retrying underneath would
multiply the attempts and void the provider's latency bound, so every client built here makes
exactly one attempt per call, within the given connect and read timeouts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import boto3
import botocore.exceptions as botocore_exc
from botocore.config import Config

from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.providers._key_ids import is_region

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient

__all__ = ["build_clients", "check_endpoints"]


def _check_url(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigurationError(f"{name} must be an http(s) URL")
    return value


def check_endpoints(
    endpoint_url: str | None, endpoint_urls: Mapping[str, str] | None
) -> dict[str, str]:
    """Validates the endpoint options; returns the per-region endpoints.

    Args:
        endpoint_url: Endpoint for every region, or None for AWS's own.
        endpoint_urls: Per-region endpoints, or None.

    Raises:
        ConfigurationError: An endpoint is not an http(s) URL, or a key of ``endpoint_urls``
            is not a region name.
    """
    if endpoint_url is not None:
        _check_url("endpoint_url", endpoint_url)
    urls: dict[str, str] = {}
    if endpoint_urls is not None:
        if not isinstance(endpoint_urls, Mapping):
            raise ConfigurationError("endpoint_urls must map region names to URLs")
        for r, url in endpoint_urls.items():
            if not is_region(r):
                raise ConfigurationError("endpoint_urls keys must be region names")
            urls[r] = _check_url(f"endpoint_urls[{r!r}]", url)
    return urls


def build_clients(
    regions: Sequence[str],
    client: KMSClient | None,
    *,
    primary_region: str,
    connect_timeout: float,
    read_timeout: float,
    endpoint_url: str | None,
    urls: Mapping[str, str],
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
) -> dict[str, KMSClient]:
    """One KMS client per region; ``client``, if given, serves the primary region.

    Building a client does not contact AWS.

    Raises:
        ConfigurationError: ``client`` is not a KMS client of the primary region, or boto3
            cannot build a client from these options.
    """
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # total_max_attempts=1 means no botocore retries at all ("max_attempts" in this
        # dict counts *retries*, so max_attempts=1 would still allow a second attempt).
        retries={"total_max_attempts": 1, "mode": "standard"},
        user_agent_extra="greenlang-crypto",
    )
    clients: dict[str, KMSClient] = {}
    if client is not None:
        meta = getattr(client, "meta", None)
        service = getattr(getattr(meta, "service_model", None), "service_name", None)
        if service != "kms":
            raise ConfigurationError("client must be a boto3 KMS client")
        if getattr(meta, "region_name", None) != primary_region:
            raise ConfigurationError("client's region must be the primary key's region")
        clients[primary_region] = client
    try:
        session = boto3.session.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=session_token,
        )
        for r in regions:
            if r not in clients:
                clients[r] = session.client(
                    "kms",
                    region_name=r,
                    endpoint_url=urls.get(r, endpoint_url),
                    config=config,
                )
    except (botocore_exc.BotoCoreError, ValueError) as exc:
        raise ConfigurationError(f"cannot build KMS client: {type(exc).__name__}") from None
    return clients
