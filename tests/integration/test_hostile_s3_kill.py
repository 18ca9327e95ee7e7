"""``EncryptedS3Client.download_file`` killed mid-download leaves no plaintext behind.

A ~160 MB object of marked plaintext is uploaded encrypted to moto's S3 (over HTTP); a real
process downloads it with ``download_file`` and gets SIGKILL once it has written a good part
of the plaintext. Nothing may be visible in the output directory while it downloads, and
nothing holding the marker may remain after the kill (hidden files included).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.s3 import EncryptedS3Client
from greenlang_crypto.service import EncryptionService

from .conftest import CREDENTIALS

boto3 = pytest.importorskip("boto3")
pytestmark = pytest.mark.integration

MIB = 1 << 20
SIZE = 160 * MIB
CAUGHT_AT = 32 * MIB


class _MarkedSource:
    """A readable of ``size`` bytes: one random MiB with a marker every 4 KiB, repeated."""

    def __init__(self, marker: bytes, size: int) -> None:
        filler = os.urandom(MIB)
        self._block = b"".join(
            marker + filler[i + len(marker) : i + 4096] for i in range(0, MIB, 4096)
        )
        self._left = size
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = MIB if n is None or n < 0 else n
        n = min(n, self._left, MIB - self._pos)
        chunk = self._block[self._pos : self._pos + n]
        self._pos = (self._pos + n) % MIB
        self._left -= n
        return chunk


def _written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/<pid>/io")


def _holding(directory: Path, marker: bytes) -> list[str]:
    found = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            data = (Path(root) / name).read_bytes()
            if marker in data:
                found.append(name)
    return found


def test_download_file_killed_mid_way_leaves_no_plaintext(
    kms_endpoint: str, tmp_path: Path
) -> None:
    marker = b"GLC-HOSTILE-S3-" + secrets.token_hex(8).encode()
    s3: Any = boto3.client("s3", region_name="us-east-1", endpoint_url=kms_endpoint, **CREDENTIALS)
    bucket = f"glc-hostile-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    data = tmp_path / "keys"
    with EncryptionService.init_local(data) as svc:
        EncryptedS3Client(svc, s3).upload_fileobj(
            _MarkedSource(marker, SIZE),
            bucket,
            "big.bin",
            context=EncryptionContext("acme", "backups"),
        )
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import boto3\n"
        "from greenlang_crypto import EncryptionContext\n"
        "from greenlang_crypto.s3 import EncryptedS3Client\n"
        "from greenlang_crypto.service import EncryptionService\n"
        f"s3 = boto3.client('s3', region_name='us-east-1', endpoint_url={kms_endpoint!r}, "
        "aws_access_key_id='testing', aws_secret_access_key='testing')\n"
        f"svc = EncryptionService.init_local({str(data)!r})\n"
        f"EncryptedS3Client(svc, s3).download_file({bucket!r}, 'big.bin', "
        f"{str(out / 'big.bin')!r}, context=EncryptionContext('acme', 'backups'))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while _written(proc.pid) < CAUGHT_AT:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
            assert time.monotonic() < deadline, "the download wrote too little"
            time.sleep(0.002)
        assert sorted(os.listdir(out)) == []  # nothing visible while it downloads
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert _holding(out, marker) == []
    assert sorted(os.listdir(out)) == []
