"""Every logger at DEBUG, and still no plaintext and no key in any log line.

An operator chasing a problem turns logging up: SQLAlchemy's engine and pool, psycopg,
botocore, uvicorn and the library itself at DEBUG. Through the CLI (encrypt, decrypt, keys
rotate), a phase-1 ``db encrypt-column`` job over 2,000 plaintext emails and a re-encryption
job, and the streams (files, and S3 on moto over HTTP), the captured logs must hold neither
the plaintext's marker nor the master key files' bytes in any encoding. The SQLAlchemy
engine logs every result row it fetches at DEBUG; the jobs read values past it.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import cli
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.s3 import EncryptedS3Client
from greenlang_crypto.service import EncryptionService
from tests.logcapture import capture_debug_logs, encodings

from .conftest import CREDENTIALS

pytestmark = pytest.mark.integration
psycopg = pytest.importorskip("psycopg")
boto3 = pytest.importorskip("boto3")

LOGGERS = [
    "",
    "sqlalchemy",
    "sqlalchemy.engine",
    "sqlalchemy.pool",
    "psycopg",
    "psycopg.pool",
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "uvicorn",
    "greenlang_crypto",
]
CTX = ["--tenant", "acme", "--data-class", "pii"]
ROWS = 2_000


@pytest.fixture
def marker() -> str:
    return f"glc-hostile-log-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def emails(pg_dsn: str, marker: str) -> Iterator[str]:
    """A table of 2,000 plaintext emails, each carrying the marker."""
    table = f"hostile_logs_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, email BYTEA)")
        conn.execute(
            f"INSERT INTO {table} SELECT g, convert_to(%s || '.' || g || '@example.com', "
            "'UTF8') FROM generate_series(1, %s) AS g",
            (marker, ROWS),
        )
    yield table
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out + out.err


def test_debug_logs_hold_no_plaintext_and_no_key(
    tmp_path: Path,
    pg_dsn: str,
    emails: str,
    marker: str,
    kms_endpoint: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("GLC_AUDIT_URL", "GLC_AUDIT_ANCHORS", "GLC_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    base = ["--data-dir", str(data)]
    plain = tmp_path / "plain.txt"
    plaintext = (marker + " line of a secret report\n").encode() * 50_000
    plain.write_bytes(plaintext)
    printed: list[str] = []
    with capture_debug_logs(LOGGERS) as logs:
        # The CLI.
        printed.append(_run(capsys, *base, "init"))
        sealed, envelope = tmp_path / "plain.glc", tmp_path / "plain.env"
        printed.append(_run(capsys, *base, "encrypt", *CTX, "-i", str(plain), "-o", str(sealed)))
        small = tmp_path / "small.txt"
        small.write_text(f"{marker}@example.com")
        printed.append(
            _run(
                capsys, *base, "encrypt", *CTX, "--envelope", "-i", str(small), "-o", str(envelope)
            )
        )
        for source in (sealed, envelope):
            back = tmp_path / f"{source.name}.out"
            printed.append(_run(capsys, *base, "decrypt", *CTX, "-i", str(source), "-o", str(back)))
        assert (tmp_path / "plain.glc.out").read_bytes() == plaintext
        printed.append(_run(capsys, *base, "keys", "rotate"))
        # The jobs: phase 1 reads 2,000 plaintext emails; re-encryption reads envelopes.
        job = ["db", "encrypt-column", "--url", pg_dsn, "--table", emails, "--column", "email"]
        job += ["--tenant", "acme", "--no-progress"]
        printed.append(_run(capsys, *base, *job))
        printed.append(_run(capsys, *base, "keys", "rotate"))
        again = ["db", "reencrypt", "--url", pg_dsn, "--table", emails, "--column", "email"]
        printed.append(_run(capsys, *base, *again, "--tenant", "acme", "--no-progress"))
        # The streams: files, and S3 (botocore at DEBUG sees every request).
        context = EncryptionContext("acme", "pii")
        with EncryptionService.init_local(data) as svc:
            svc.encrypt_file(plain, tmp_path / "lib.glc", context)
            svc.decrypt_file(tmp_path / "lib.glc", tmp_path / "lib.out", context)
            s3: Any = boto3.client(
                "s3", region_name="us-east-1", endpoint_url=kms_endpoint, **CREDENTIALS
            )
            bucket = f"glc-hostile-logs-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(Bucket=bucket)
            client = EncryptedS3Client(svc, s3, segment_size=64 * 1024)
            client.put_object(Bucket=bucket, Key="r.txt", Body=plaintext, context=context)
            client.upload_fileobj(io.BytesIO(plaintext), bucket, "u.txt", context=context)
            got = client.get_object(Bucket=bucket, Key="r.txt", context=context)
            assert got["Body"].read() == plaintext
            client.download_file(bucket, "u.txt", tmp_path / "s3.out", context=context)
    assert (tmp_path / "s3.out").read_bytes() == plaintext
    with psycopg.connect(pg_dsn) as conn:
        values = [bytes(v) for (v,) in conn.execute(f"SELECT email FROM {emails}")]
    assert len(values) == ROWS and not any(marker.encode() in v for v in values)
    captured = logs.getvalue()
    # The capture saw what it had to see: SQL statements, pool events, S3 requests.
    for seen in ("sqlalchemy.engine", "sqlalchemy.pool", "botocore", "PutObject"):
        assert seen in captured, seen
    assert marker not in captured, "plaintext in the DEBUG logs"
    assert not any(marker in text for text in printed), "plaintext on stdout or stderr"
    keys = sorted((data / "master-keys").glob("master-v*.key"))
    assert len(keys) == 3
    for key in keys:
        for form in encodings(key.read_bytes()):
            assert form not in captured, f"{key.name} in the DEBUG logs"
