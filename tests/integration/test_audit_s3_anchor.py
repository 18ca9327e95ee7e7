"""Audit checkpoints anchored in S3 with Object Lock, on the moto server over HTTP."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import pytest

from greenlang_crypto.audit import AuditLog, S3Anchor, SqliteAuditSink, open_anchor
from greenlang_crypto.service import EncryptionService

boto3 = pytest.importorskip("boto3")
ENDPOINT = os.environ.get("GLC_KMS_ENDPOINT")
pytestmark = pytest.mark.skipif(not ENDPOINT, reason="GLC_KMS_ENDPOINT not set")


def _s3() -> object:
    return boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=ENDPOINT,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_s3_anchor_detects_truncation(tmp_path: Path) -> None:
    client = _s3()
    bucket = f"glc-audit-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)  # type: ignore[attr-defined]
    data = tmp_path / "data"
    svc = EncryptionService.init_local(data)

    def log() -> AuditLog:
        anchor = S3Anchor(bucket, client=client, retention_days=1)
        audit = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False, anchors=[anchor])
        audit.attach(svc)
        return audit

    audit = log()
    for i in range(3):
        audit.record("key_accessed", actor="test", outcome="success", details={"i": i})
    audit.flush()
    first = audit.checkpoint()
    assert first is not None
    audit.record("key_accessed", actor="test", outcome="success")
    audit.close()
    listing = client.list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    assert listing["KeyCount"] == 2
    # Locked objects cannot be deleted, not even by the bucket owner.
    key = listing["Contents"][0]["Key"]
    version = client.list_object_versions(Bucket=bucket, Prefix=key)["Versions"][0]["VersionId"]  # type: ignore[attr-defined]
    with pytest.raises(Exception):
        client.delete_object(Bucket=bucket, Key=key, VersionId=version)  # type: ignore[attr-defined]

    audit = log()
    assert audit.verify().ok
    audit.sink.close()
    con = sqlite3.connect(data / "audit.db")
    with con:
        con.execute("DELETE FROM glc_audit WHERE seq > 2")
    con.close()
    audit = log()
    assert not audit.verify().ok
    audit.sink.close()
    svc.close()
    assert isinstance(open_anchor(f"s3://{bucket}/p/"), S3Anchor)
