"""Fixtures for tests against a real KMS API: moto in server mode, spoken to over HTTP.

``kms_endpoint`` uses ``GLC_KMS_ENDPOINT`` when set (CI starts ``tests/kms_server.py`` itself)
and otherwise starts ``tests/kms_server.py`` on a free port for the session. The launcher
patches moto so multi-Region keys can decrypt (see that file). ``kms_keys`` wipes the server
state and creates a fresh multi-Region primary in us-east-1 with its us-west-2 replica, plus a
single-Region key, for every test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / "tests" / "kms_server.py"
PRIMARY_REGION = "us-east-1"
REPLICA_REGION = "us-west-2"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# A port nothing listens on: connections are refused at once (an "unreachable region").
CLOSED_ENDPOINT = "http://127.0.0.1:1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, timeout: float = 2.0) -> None:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()


def _wait_ready(endpoint: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"KMS server exited early with code {proc.returncode}")
        try:
            _post(f"{endpoint}/moto-api/reset", timeout=0.5)
            return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"KMS server at {endpoint} not ready after {timeout}s") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def kms_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a moto KMS server (from GLC_KMS_ENDPOINT or started here)."""
    external = os.environ.get("GLC_KMS_ENDPOINT")
    if external:
        endpoint = external.rstrip("/")
        _wait_ready(endpoint, None, timeout=15)
        yield endpoint
        return
    port = _free_port()
    log_path = tmp_path_factory.mktemp("kms") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(endpoint, proc, timeout=30)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def kms_client(endpoint: str, region: str = PRIMARY_REGION) -> Any:
    """A plain boto3 KMS client for test setup (not the provider's client)."""
    import boto3

    return boto3.client("kms", region_name=region, endpoint_url=endpoint, **CREDENTIALS)


def create_multi_region_key(endpoint: str) -> tuple[str, str]:
    """Creates an MRK primary in us-east-1 and its us-west-2 replica; returns both ARNs."""
    east = kms_client(endpoint, PRIMARY_REGION)
    meta = east.create_key(MultiRegion=True, Description="greenlang test MRK")["KeyMetadata"]
    replica = east.replicate_key(KeyId=meta["KeyId"], ReplicaRegion=REPLICA_REGION)
    return meta["Arn"], replica["ReplicaKeyMetadata"]["Arn"]


@dataclass(frozen=True)
class KmsKeys:
    """Keys created for one test."""

    endpoint: str
    primary_arn: str
    replica_arn: str
    single_arn: str

    def client(self, region: str = PRIMARY_REGION) -> Any:
        return kms_client(self.endpoint, region)


@pytest.fixture
def kms_keys(kms_endpoint: str) -> KmsKeys:
    """Fresh server state: an MRK (us-east-1 primary, us-west-2 replica) and a plain key."""
    _post(f"{kms_endpoint}/moto-api/reset")
    primary, replica = create_multi_region_key(kms_endpoint)
    single = kms_client(kms_endpoint).create_key(Description="greenlang test key")["KeyMetadata"]
    return KmsKeys(kms_endpoint, primary, replica, single["Arn"])


@pytest.fixture
def make_provider(kms_keys: KmsKeys) -> Callable[..., Any]:
    """Builds an AwsKmsKeyProvider against the server with short, test-friendly timings."""
    from greenlang_crypto.providers.aws_kms import AwsKmsKeyProvider

    def make(**overrides: Any) -> AwsKmsKeyProvider:
        options: dict[str, Any] = {
            "keys": [kms_keys.primary_arn, kms_keys.replica_arn, kms_keys.single_arn],
            "endpoint_url": kms_keys.endpoint,
            "connect_timeout": 0.5,
            "read_timeout": 2.0,
            "max_attempts": 4,
            "base_delay": 0.001,
            "max_delay": 0.01,
            "deadline": 3.0,
            **CREDENTIALS,
        }
        options.update(overrides)
        return AwsKmsKeyProvider(**options)

    return make
