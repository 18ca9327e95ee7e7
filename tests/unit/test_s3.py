"""Client-side encrypted S3 objects over an in-memory stand-in for a boto3 S3 client.

The stand-in stores what it is given and serves byte ranges, counting the bytes it sends, so
these tests see the ciphertext at rest and what a ranged read fetched. The same client runs
against moto's S3 over HTTP in ``tests/integration/test_s3.py``.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.exceptions import DecryptionError, InvalidArgumentError
from greenlang_crypto.s3 import FORMAT, EncryptedS3Client, object_binding
from greenlang_crypto.service import EncryptionService

CTX = EncryptionContext(tenant_id="acme", data_class="backups")
SEGMENT = 64 * 1024
SIZE = 300_000


class FakeS3:
    """PutObject, GetObject (with Range and IfMatch), HeadObject and upload_fileobj on a dict."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, dict[str, str], str]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.sent = 0

    def _store(self, bucket: str, key: str, body: bytes, metadata: dict[str, str]) -> None:
        etag = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
        self.objects[(bucket, key)] = (body, dict(metadata), etag)

    def put_object(self, *, Bucket: str, Key: str, Body: Any, Metadata: Any, **kw: Any) -> Any:
        self.requests.append(("PutObject", kw))
        self._store(Bucket, Key, Body.read(), Metadata)
        return {"ETag": self.objects[(Bucket, Key)][2]}

    def upload_fileobj(
        self,
        reader: Any,
        bucket: str,
        key: str,
        *,
        ExtraArgs: Any,
        Callback: Any,
        Config: Any,
    ) -> None:
        self.requests.append(("Upload", {"ExtraArgs": ExtraArgs, "Config": Config}))
        body = b""
        while chunk := reader.read(10_000):
            body += chunk
            if Callback is not None:
                Callback(len(chunk))
        extra = {k: v for k, v in ExtraArgs.items() if k != "Metadata"}
        self.requests.append(("UploadExtra", extra))
        self._store(bucket, key, body, ExtraArgs["Metadata"])

    def head_object(self, *, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        self.requests.append(("HeadObject", kw))
        body, meta, etag = self.objects[(Bucket, Key)]
        return {"ContentLength": len(body), "Metadata": dict(meta), "ETag": etag}

    def get_object(
        self,
        *,
        Bucket: str,
        Key: str,
        Range: str | None = None,
        IfMatch: str | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        self.requests.append(("GetObject", {"Range": Range, "IfMatch": IfMatch, **kw}))
        body, meta, etag = self.objects[(Bucket, Key)]
        if IfMatch is not None and IfMatch != etag:
            raise RuntimeError("412 Precondition Failed")
        if Range is not None:
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", Range)
            assert m is not None, Range
            body = body[int(m.group(1)) : int(m.group(2)) + 1]
        self.sent += len(body)
        return {
            "Body": io.BytesIO(body),
            "ContentLength": len(body),
            "Metadata": dict(meta),
            "ETag": etag,
        }


def pattern(n: int) -> bytes:
    return (hashlib.shake_256(b"s3-unit").digest(65536) * (n // 65536 + 1))[:n]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptionService]:
    svc = EncryptionService.init_local(tmp_path_factory.mktemp("s3-keys"))
    yield svc
    svc.close()


@pytest.fixture
def s3() -> FakeS3:
    return FakeS3()


@pytest.fixture
def enc(service: EncryptionService, s3: FakeS3) -> EncryptedS3Client:
    return EncryptedS3Client(service, s3, segment_size=SEGMENT)


def test_the_binding_names_bucket_and_key_unambiguously() -> None:
    assert object_binding("b", "k/1") == b"greenlang-crypto/s3/v1\x00b\x00k/1"
    assert object_binding("ab", "c") != object_binding("a", "bc")
    assert object_binding("b", "") == b"greenlang-crypto/s3/v1\x00b\x00"


@pytest.mark.parametrize("bucket", ["", "a\x00b"])
def test_a_bucket_must_be_a_name_without_nul(bucket: str) -> None:
    with pytest.raises(InvalidArgumentError, match="bucket"):
        object_binding(bucket, "k")


def test_put_then_get_stores_only_a_stream_with_informational_metadata(
    enc: EncryptedS3Client, s3: FakeS3
) -> None:
    pt = pattern(SIZE)
    enc.put_object(
        Bucket="b", Key="docs/a", Body=pt, context=CTX, Metadata={"owner": "acme"}, ACL="private"
    )
    assert s3.requests == [("PutObject", {"ACL": "private"})]
    stored, meta, _ = s3.objects[("b", "docs/a")]
    assert stored[:1] == b"\xfb" and pt[:64] not in stored
    assert meta["owner"] == "acme"
    assert meta["glc-format"] == FORMAT == "stream-v1"
    assert meta["glc-segment-size"] == str(SEGMENT)
    assert meta["glc-plaintext-length"] == str(SIZE)
    assert meta["glc-key-version"] == "1"
    assert re.fullmatch(r"stored:\d+", meta["glc-key-ref"])
    got = enc.get_object(Bucket="b", Key="docs/a", context=CTX)
    assert got["ContentLength"] == SIZE
    with got["Body"] as body:
        assert body.read() == pt


def test_an_inline_key_reference_is_named_in_the_metadata(
    service: EncryptionService, s3: FakeS3
) -> None:
    enc = EncryptedS3Client(service, s3, segment_size=SEGMENT, key_reference="inline")
    enc.put_object(Bucket="b", Key="k", Body=b"x", context=CTX)
    assert s3.objects[("b", "k")][1]["glc-key-ref"].startswith("inline:local:")
    assert enc.get_object(Bucket="b", Key="k", context=CTX)["Body"].read() == b"x"


def test_a_body_of_unknown_length_has_no_length_in_the_metadata(
    enc: EncryptedS3Client, s3: FakeS3
) -> None:
    enc.put_object(Bucket="b", Key="it", Body=iter([b"ab", b"cd"]), context=CTX)
    assert "glc-plaintext-length" not in s3.objects[("b", "it")][1]
    assert enc.get_object(Bucket="b", Key="it", context=CTX)["Body"].read() == b"abcd"


@pytest.mark.parametrize("name", ["glc-format", "GLC-anything", "Glc-key-ref"])
def test_reserved_metadata_names_are_refused_before_anything_is_stored(
    enc: EncryptedS3Client, s3: FakeS3, name: str
) -> None:
    with pytest.raises(InvalidArgumentError, match="reserved"):
        enc.put_object(Bucket="b", Key="k", Body=b"x", context=CTX, Metadata={name: "1"})
    assert s3.objects == {}


def test_an_object_copied_elsewhere_or_read_in_another_context_fails(
    enc: EncryptedS3Client, s3: FakeS3
) -> None:
    enc.put_object(Bucket="b", Key="a", Body=b"secret", context=CTX)
    s3.objects[("b", "renamed")] = s3.objects[("b", "a")]
    s3.objects[("other", "a")] = s3.objects[("b", "a")]
    for bucket, key, ctx in [
        ("b", "renamed", CTX),
        ("other", "a", CTX),
        ("b", "a", EncryptionContext(tenant_id="globex", data_class="backups")),
    ]:
        with pytest.raises(DecryptionError):
            enc.get_object(Bucket=bucket, Key=key, context=ctx)["Body"].read()


def test_a_changed_byte_fails_by_the_time_the_end_is_read(
    enc: EncryptedS3Client, s3: FakeS3
) -> None:
    pt = pattern(SIZE)
    enc.put_object(Bucket="b", Key="a", Body=pt, context=CTX)
    body, meta, etag = s3.objects[("b", "a")]
    flipped = bytearray(body)
    flipped[len(body) // 2] ^= 1
    s3.objects[("b", "a")] = (bytes(flipped), meta, etag)
    with pytest.raises(DecryptionError):
        enc.get_object(Bucket="b", Key="a", context=CTX)["Body"].read()


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=65530-65545", 65530, 65546),
        ("bytes=299990-", 299990, SIZE),
        ("bytes=-7", SIZE - 7, SIZE),
        ("bytes=-999999", 0, SIZE),
        ("bytes=299990-999999", 299990, SIZE),
    ],
)
def test_a_ranged_get_returns_that_slice_of_the_plaintext(
    enc: EncryptedS3Client, s3: FakeS3, spec: str, start: int, end: int
) -> None:
    pt = pattern(SIZE)
    enc.put_object(Bucket="b", Key="a", Body=pt, context=CTX)
    part = enc.get_object(Bucket="b", Key="a", context=CTX, Range=spec)
    assert part["ContentLength"] == end - start
    assert part["ContentRange"] == f"bytes {start}-{end - 1}/{SIZE}"
    with part["Body"] as body:
        assert body.read() == pt[start:end]


def test_a_ranged_get_fetches_only_the_covering_segments_of_the_version_it_saw(
    enc: EncryptedS3Client, s3: FakeS3
) -> None:
    pt = pattern(SIZE)
    enc.put_object(Bucket="b", Key="a", Body=pt, context=CTX)
    stored_len = len(s3.objects[("b", "a")][0])
    s3.requests.clear()
    part = enc.get_object(Bucket="b", Key="a", context=CTX, Range="bytes=140000-140009")
    assert part["Body"].read() == pt[140000:140010]
    # The header's neighbourhood, the covering segment and the final one (opened first, to
    # prove the object's length), each with its tag: far less than the object.
    assert s3.sent < 4096 + 2 * SEGMENT + 1024 < stored_len
    gets = [kw for name, kw in s3.requests if name == "GetObject"]
    etag = s3.objects[("b", "a")][2]
    assert gets and all(kw["IfMatch"] == etag for kw in gets)


def test_an_object_replaced_during_a_ranged_read_is_not_mixed(
    enc: EncryptedS3Client, s3: FakeS3
) -> None:
    enc.put_object(Bucket="b", Key="a", Body=pattern(SIZE), context=CTX)
    part = enc.get_object(Bucket="b", Key="a", context=CTX, Range="bytes=200000-200009")
    enc.put_object(Bucket="b", Key="a", Body=pattern(SIZE)[::-1], context=CTX)
    with pytest.raises(RuntimeError, match="412"):
        part["Body"].read()


@pytest.mark.parametrize("spec", ["bytes=300000-", "bytes=5-2", "items=1-2", "bytes=-", "1-2"])
def test_a_malformed_or_unsatisfiable_range_is_refused(
    enc: EncryptedS3Client, s3: FakeS3, spec: str
) -> None:
    enc.put_object(Bucket="b", Key="a", Body=pattern(SIZE), context=CTX)
    with pytest.raises(InvalidArgumentError, match="Range"):
        enc.get_object(Bucket="b", Key="a", context=CTX, Range=spec)


def test_upload_and_download_stream_through_a_file_object(
    service: EncryptionService, s3: FakeS3, tmp_path: Path
) -> None:
    config = object()
    enc = EncryptedS3Client(service, s3, segment_size=SEGMENT, transfer_config=config)
    src = tmp_path / "in.bin"
    pt = pattern(SIZE)
    src.write_bytes(pt)
    progress: list[int] = []
    enc.upload_file(
        src,
        "b",
        "up",
        context=CTX,
        ExtraArgs={"ServerSideEncryption": "aws:kms", "Metadata": {"owner": "o"}},
        Callback=progress.append,
    )
    stored, meta, _ = s3.objects[("b", "up")]
    assert sum(progress) == len(stored)  # the callback counts ciphertext bytes
    assert (
        "Upload",
        {"ExtraArgs": s3.requests[0][1]["ExtraArgs"], "Config": config},
    ) in s3.requests
    assert ("UploadExtra", {"ServerSideEncryption": "aws:kms"}) in s3.requests
    assert meta["owner"] == "o" and meta["glc-plaintext-length"] == str(SIZE)
    out = io.BytesIO()
    assert enc.download_fileobj("b", "up", out, context=CTX) == SIZE
    assert out.getvalue() == pt
    dst = tmp_path / "out.bin"
    assert enc.download_file("b", "up", dst, context=CTX) == SIZE
    assert dst.read_bytes() == pt
    assert dst.stat().st_mode & 0o777 == 0o600


def test_a_failed_download_leaves_nothing_at_the_file_name(
    enc: EncryptedS3Client, s3: FakeS3, tmp_path: Path
) -> None:
    enc.put_object(Bucket="b", Key="a", Body=pattern(SIZE), context=CTX)
    s3.objects[("b", "moved")] = s3.objects[("b", "a")]
    dst = tmp_path / "out.bin"
    with pytest.raises(DecryptionError):
        enc.download_file("b", "moved", dst, context=CTX)
    assert list(tmp_path.iterdir()) == []


def test_repr_and_the_underlying_client(enc: EncryptedS3Client, s3: FakeS3) -> None:
    assert repr(enc) == f"<EncryptedS3Client segment_size={SEGMENT}>"
    assert enc.client is s3
