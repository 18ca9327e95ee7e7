"""Client-side encrypted S3 objects against the moto server's S3, over HTTP.

Multipart upload of 100 MiB and a ranged read in its middle that fetches only the covering
segment (bytes counted with botocore's event hooks), an object copied under another key or
bucket, tampered and truncated objects, SSE-KMS beside client-side encryption, metadata.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.exceptions import DecryptionError, InvalidArgumentError
from greenlang_crypto.s3 import FORMAT, EncryptedS3Client, object_binding
from greenlang_crypto.service import EncryptionService

from .conftest import CREDENTIALS, kms_client

boto3 = pytest.importorskip("boto3")
pytestmark = pytest.mark.integration

MIB = 1 << 20
CTX = EncryptionContext(tenant_id="acme", data_class="backups")


class Traffic:
    """Counts S3 requests and the body bytes of GetObject responses (botocore event hooks)."""

    def __init__(self, client: Any) -> None:
        self.calls: list[str] = []
        self.get_bytes = 0
        client.meta.events.register("after-call.s3", self._after)

    def _after(self, http_response: Any, parsed: Any, model: Any, **_: Any) -> None:
        self.calls.append(model.name)
        if model.name == "GetObject":
            self.get_bytes += int(parsed.get("ContentLength", 0))

    def reset(self) -> None:
        self.calls.clear()
        self.get_bytes = 0


@pytest.fixture
def s3(kms_endpoint: str) -> Any:
    return boto3.client("s3", region_name="us-east-1", endpoint_url=kms_endpoint, **CREDENTIALS)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"glc-streams-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[EncryptionService]:
    service = EncryptionService.init_local(tmp_path / "keys")
    yield service
    service.close()


def pattern(n: int) -> bytes:
    block = hashlib.shake_256(b"s3-pattern").digest(MIB)
    return (block * (n // MIB + 1))[:n]


def test_put_get_metadata_and_ranges(svc: EncryptionService, s3: Any, bucket: str) -> None:
    enc = EncryptedS3Client(svc, s3, segment_size=64 * 1024)
    assert "segment_size=65536" in repr(enc) and enc.client is s3
    pt = pattern(300_000)
    enc.put_object(
        Bucket=bucket, Key="docs/a.bin", Body=pt, context=CTX, Metadata={"owner": "acme"}
    )
    raw = s3.get_object(Bucket=bucket, Key="docs/a.bin")
    stored = raw["Body"].read()
    assert stored[:1] == b"\xfb" and pt[:64] not in stored
    meta = raw["Metadata"]
    assert meta["glc-format"] == FORMAT and meta["owner"] == "acme"
    assert meta["glc-segment-size"] == "65536" and meta["glc-plaintext-length"] == "300000"
    assert meta["glc-key-version"] == "1" and meta["glc-key-ref"].startswith("stored:")
    got = enc.get_object(Bucket=bucket, Key="docs/a.bin", context=CTX)
    assert got["ContentLength"] == len(pt)
    with got["Body"] as body:
        assert body.read() == pt
    for spec, (a, b) in {
        "bytes=0-0": (0, 1),
        "bytes=65530-65545": (65530, 65546),
        "bytes=299990-": (299990, 300000),
        "bytes=-7": (300000 - 7, 300000),
        "bytes=299990-999999": (299990, 300000),
    }.items():
        part = enc.get_object(Bucket=bucket, Key="docs/a.bin", context=CTX, Range=spec)
        assert part["ContentLength"] == b - a
        assert part["ContentRange"] == f"bytes {a}-{b - 1}/300000"
        with part["Body"] as body:
            assert body.read() == pt[a:b], spec
    for bad in ("bytes=300000-", "bytes=5-2", "items=1-2", "bytes=-"):
        with pytest.raises(InvalidArgumentError):
            enc.get_object(Bucket=bucket, Key="docs/a.bin", context=CTX, Range=bad)
    with pytest.raises(InvalidArgumentError):
        enc.put_object(Bucket=bucket, Key="x", Body=b"", context=CTX, Metadata={"glc-x": "1"})
    # Iterables and files work as bodies too; an empty object is a valid stream.
    enc.put_object(Bucket=bucket, Key="empty", Body=iter([]), context=CTX)
    assert enc.get_object(Bucket=bucket, Key="empty", context=CTX)["Body"].read() == b""


def test_multipart_upload_then_ranged_read_in_the_middle(
    svc: EncryptionService, s3: Any, bucket: str, tmp_path: Path
) -> None:
    from boto3.s3.transfer import TransferConfig

    size = 100 * MIB
    src = tmp_path / "big.bin"
    src.write_bytes(pattern(size))
    traffic = Traffic(s3)
    enc = EncryptedS3Client(
        svc, s3, transfer_config=TransferConfig(multipart_threshold=8 * MIB, max_concurrency=4)
    )
    enc.upload_file(src, bucket, "backups/big.bin", context=CTX)
    assert traffic.calls.count("CreateMultipartUpload") == 1
    assert traffic.calls.count("UploadPart") >= 12
    head = s3.head_object(Bucket=bucket, Key="backups/big.bin")
    assert head["Metadata"]["glc-plaintext-length"] == str(size)
    # A 1 MiB read in the middle: the header, then the one segment that covers it.
    traffic.reset()
    offset = 50 * MIB
    part = enc.get_object(
        Bucket=bucket,
        Key="backups/big.bin",
        context=CTX,
        Range=f"bytes={offset}-{offset + MIB - 1}",
    )
    with part["Body"] as body:
        assert body.read() == pattern(size)[offset : offset + MIB]
    # The covering segments, plus the final one: it is opened first to prove the length.
    assert traffic.get_bytes <= 3 * (MIB + 16), traffic.get_bytes
    # An unaligned read across a segment boundary fetches the two segments it covers.
    traffic.reset()
    part = enc.get_object(
        Bucket=bucket, Key="backups/big.bin", context=CTX, Range=f"bytes={offset - 10}-{offset + 9}"
    )
    with part["Body"] as body:
        assert body.read() == pattern(size)[offset - 10 : offset + 10]
    assert traffic.get_bytes <= 3 * (MIB + 16) + 4096
    # The whole object back through a file written atomically.
    out = tmp_path / "back.bin"
    assert enc.download_file(bucket, "backups/big.bin", out, context=CTX) == size
    assert out.read_bytes() == src.read_bytes()
    counts = svc.operation_counts()
    assert counts["encrypt"]["backups"][1] == size


def test_copied_or_renamed_object_fails(svc: EncryptionService, s3: Any, bucket: str) -> None:
    enc = EncryptedS3Client(svc, s3)
    enc.put_object(Bucket=bucket, Key="a", Body=b"payroll", context=CTX)
    other = f"{bucket}-other"
    s3.create_bucket(Bucket=other)
    s3.copy_object(Bucket=bucket, Key="b", CopySource={"Bucket": bucket, "Key": "a"})
    s3.copy_object(Bucket=other, Key="a", CopySource={"Bucket": bucket, "Key": "a"})
    for b, k in ((bucket, "b"), (other, "a")):
        with pytest.raises(DecryptionError):
            enc.get_object(Bucket=b, Key=k, context=CTX)
        with pytest.raises(DecryptionError):
            enc.get_object(Bucket=b, Key=k, context=CTX, Range="bytes=0-1")
    wrong = EncryptionContext(tenant_id="other", data_class="backups")
    with pytest.raises(DecryptionError):
        enc.get_object(Bucket=bucket, Key="a", context=wrong)
    assert enc.get_object(Bucket=bucket, Key="a", context=CTX)["Body"].read() == b"payroll"
    assert object_binding(bucket, "a") != object_binding(bucket, "b")
    with pytest.raises(InvalidArgumentError):
        object_binding("", "a")


def test_tampered_or_truncated_object_fails(
    svc: EncryptionService, s3: Any, bucket: str, tmp_path: Path
) -> None:
    enc = EncryptedS3Client(svc, s3, segment_size=64 * 1024)
    pt = pattern(3 * 65536 + 5)
    enc.put_object(Bucket=bucket, Key="t", Body=pt, context=CTX)
    good = s3.get_object(Bucket=bucket, Key="t")["Body"].read()
    hlen = len(good) - len(pt) - 4 * 16
    flipped = bytearray(good)
    flipped[hlen + 65552 + 100] ^= 0x01  # inside the second segment
    dropped = good[: hlen + 3 * 65552]  # without the final segment
    for bad in (bytes(flipped), dropped, good + b"\x00"):
        s3.put_object(Bucket=bucket, Key="t", Body=bad)
        got = enc.get_object(Bucket=bucket, Key="t", context=CTX)
        with got["Body"] as body, pytest.raises(DecryptionError):
            body.read()
        out = tmp_path / "t.out"
        with pytest.raises(DecryptionError):
            enc.download_file(bucket, "t", out, context=CTX)
        assert not out.exists()
    # The segment before the damage still reads in a range; the damaged one does not.
    s3.put_object(Bucket=bucket, Key="t", Body=bytes(flipped))
    first = enc.get_object(Bucket=bucket, Key="t", context=CTX, Range="bytes=0-99")
    assert first["Body"].read() == pt[:100]
    second = enc.get_object(Bucket=bucket, Key="t", context=CTX, Range="bytes=65536-65600")
    with pytest.raises(DecryptionError):
        second["Body"].read()


def test_beside_sse_kms(svc: EncryptionService, s3: Any, bucket: str, kms_endpoint: str) -> None:
    key_id = kms_client(kms_endpoint).create_key(Description="sse")["KeyMetadata"]["KeyId"]
    enc = EncryptedS3Client(svc, s3)
    enc.put_object(
        Bucket=bucket,
        Key="sse",
        Body=b"both layers",
        context=CTX,
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=key_id,
    )
    stream = io.BytesIO(os.urandom(3 * MIB))
    enc.upload_fileobj(
        stream,
        bucket,
        "sse-upload",
        context=CTX,
        ExtraArgs={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_id},
    )
    for k in ("sse", "sse-upload"):
        head = s3.head_object(Bucket=bucket, Key=k)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["Metadata"]["glc-format"] == FORMAT
    assert enc.get_object(Bucket=bucket, Key="sse", context=CTX)["Body"].read() == b"both layers"
    back = io.BytesIO()
    assert enc.download_fileobj(bucket, "sse-upload", back, context=CTX) == 3 * MIB
    assert back.getvalue() == stream.getvalue()


def test_inline_references_and_impossible_lengths(
    svc: EncryptionService, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = EncryptedS3Client(svc, s3, key_reference="inline")
    enc.put_object(Bucket=bucket, Key="i", Body=io.BytesIO(b"inline"), context=CTX)
    meta = s3.head_object(Bucket=bucket, Key="i")["Metadata"]
    assert meta["glc-key-ref"].startswith("inline:local:")
    assert "glc-plaintext-length" not in meta  # not known before a file object is read
    assert enc.get_object(Bucket=bucket, Key="i", context=CTX)["Body"].read() == b"inline"
    # A body cut inside its final tag has a length no stream can have.
    good = s3.get_object(Bucket=bucket, Key="i")["Body"].read()
    s3.put_object(Bucket=bucket, Key="i", Body=good[:-10])
    with pytest.raises(DecryptionError):
        enc.get_object(Bucket=bucket, Key="i", context=CTX)
    # Without a client, the default boto3 one is made (no request is sent here).
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert EncryptedS3Client(svc).client.meta.service_model.service_name == "s3"


def test_ranged_reads_pin_the_version_they_started_on(
    svc: EncryptionService, s3: Any, bucket: str
) -> None:
    from botocore.exceptions import ClientError

    enc = EncryptedS3Client(svc, s3, segment_size=64 * 1024)
    enc.put_object(Bucket=bucket, Key="v", Body=pattern(200_000), context=CTX)
    part = enc.get_object(Bucket=bucket, Key="v", context=CTX, Range="bytes=100000-100009")
    # Replaced after the header was read: the next GET is refused, not mixed with the old one.
    enc.put_object(Bucket=bucket, Key="v", Body=pattern(300_000)[::-1], context=CTX)
    with pytest.raises(ClientError) as err:
        part["Body"].read()
    assert err.value.response["Error"]["Code"] in ("PreconditionFailed", "412")


def test_a_ranged_read_proves_the_object_length_before_reporting_it(
    svc: EncryptionService, s3: Any, bucket: str
) -> None:
    enc = EncryptedS3Client(svc, s3, segment_size=64 * 1024)
    pt = pattern(3 * 65536 + 5)
    enc.put_object(Bucket=bucket, Key="cut", Body=pt, context=CTX)
    good = s3.get_object(Bucket=bucket, Key="cut")["Body"].read()
    hlen = len(good) - len(pt) - 4 * 16
    whole = enc.get_object(Bucket=bucket, Key="cut", context=CTX, Range="bytes=0-9")
    assert whole["ContentRange"] == f"bytes 0-9/{len(pt)}"
    assert whole["Body"].read() == pt[:10]
    # Cut at a segment boundary (the final segment gone), and cut inside a segment: the
    # first ten bytes still authenticate, but the length the object claims does not.
    for cut in (good[: hlen + 2 * 65552], good[: hlen + 65552 + 300]):
        s3.put_object(Bucket=bucket, Key="cut", Body=cut)
        with pytest.raises(DecryptionError):
            enc.get_object(Bucket=bucket, Key="cut", context=CTX, Range="bytes=0-9")
        # A range past the cut is the same opaque failure, not a "range not satisfiable".
        with pytest.raises(DecryptionError):
            enc.get_object(Bucket=bucket, Key="cut", context=CTX, Range=f"bytes={len(pt) - 5}-")
