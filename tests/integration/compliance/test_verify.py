"""`greenlang-crypto verify` against the real PostgreSQL and the moto KMS server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.audit import AuditLog, SqliteAuditSink
from greenlang_crypto.compliance.verify import ColumnSpec, run_verification
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from tests.conftest import pg_server_url

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
CTX = EncryptionContext("acme", "pii")


@pytest.fixture
def pg_url() -> str:
    """The shared test database, in the SQLAlchemy form ``create_engine`` takes."""
    return pg_server_url()


@pytest.fixture
def users_table(pg_url: str) -> Iterator[tuple[str, list[int]]]:
    """A users table with encrypted emails and one seeded plaintext row."""
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS compliance_users"))
        conn.execute(text("CREATE TABLE compliance_users (id INTEGER PRIMARY KEY, email BYTEA)"))
    yield "compliance_users", []
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS compliance_users"))
    engine.dispose()


def _fill(pg_url: str, svc: EncryptionService, plaintext_ids: list[int]) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.begin() as conn:
        for i in range(1, 51):
            value = (
                f"user{i}@example.com".encode()
                if i in plaintext_ids
                else svc.encrypt(f"user{i}@example.com".encode(), CTX)
            )
            conn.execute(text("INSERT INTO compliance_users VALUES (:i, :v)"), {"i": i, "v": value})
        conn.execute(text("INSERT INTO compliance_users VALUES (51, NULL)"))
    engine.dispose()


def test_verify_finds_seeded_plaintext_row(
    tmp_path: Path,
    pg_url: str,
    users_table: tuple[str, list[int]],
    kms_keys: Any,
    make_provider: Callable[..., Any],
) -> None:
    # moto resolves only bare key ids for EnableKeyRotation (AWS also takes the ARN).
    key_id = kms_keys.single_arn.rsplit("/", 1)[-1]
    kms_keys.client().enable_key_rotation(KeyId=key_id, RotationPeriodInDays=365)
    keys = (kms_keys.single_arn,)
    cfg = EncryptionServiceConfig(
        provider="aws-kms",
        kms_key_ids=keys,
        data_dir=tmp_path,
        key_store_url=f"sqlite:///{tmp_path}/ks.db",
    )
    with EncryptionService(cfg, provider=make_provider(keys=list(keys))) as svc:
        _fill(pg_url, svc, plaintext_ids=[17])
        report = run_verification(
            svc,
            db_url=pg_url,
            columns=[ColumnSpec.parse("compliance_users.email")],
            terraform_dir=ROOT / "terraform" / "modules" / "kms",
        )
    by = {r.control: r for r in report.results}
    assert by["data.columns_encrypted"].status == "fail"
    assert by["data.columns_encrypted"].evidence["plaintext_rows"] == {
        "compliance_users.email": ["17"]
    }
    assert "user17@example.com" not in report.to_json()
    assert by["keys.rotation"].status == "pass", by["keys.rotation"]  # read from KMS
    assert by["crypto.algorithm"].status == "pass"
    assert by["keys.cache_ttl"].status == "pass"
    for control in ("infra.kms_rotation", "infra.deletion_window", "infra.multi_region"):
        assert by[control].status == "pass", by[control]
    assert report.failed == [by["data.columns_encrypted"]]


def test_verify_rotation_off_in_kms_fails(
    tmp_path: Path, kms_keys: Any, make_provider: Callable[..., Any]
) -> None:
    keys = (kms_keys.single_arn,)
    cfg = EncryptionServiceConfig(
        provider="aws-kms",
        kms_key_ids=keys,
        data_dir=tmp_path,
        key_store_url=f"sqlite:///{tmp_path}/ks.db",
    )
    with EncryptionService(cfg, provider=make_provider(keys=list(keys))) as svc:
        report = run_verification(svc, terraform_dir=ROOT / "terraform" / "modules" / "kms")
    by = {r.control: r for r in report.results}
    assert by["keys.rotation"].status == "fail"
    assert by["data.columns_encrypted"].status == "skipped"


def test_verify_cli_exit_codes(tmp_path: Path, pg_url: str, users_table: Any) -> None:
    data = tmp_path / "data"
    LocalKeyProvider(data).create_master_key()
    audit = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False)
    with EncryptionService(EncryptionServiceConfig(data_dir=data), observers=[audit]) as svc:
        audit.attach(svc)
        _fill(pg_url, svc, plaintext_ids=[])
        audit.close()
    env = dict(os.environ, GLC_DATA_DIR=str(data))
    base = [sys.executable, "-m", "greenlang_crypto", "verify", "--db", pg_url]
    base += ["--terraform", str(ROOT / "terraform" / "modules" / "kms"), "--json"]
    ok = subprocess.run(
        [*base, "--column", "compliance_users.email"], capture_output=True, env=env, check=False
    )
    assert ok.returncode == 0, ok.stdout.decode() + ok.stderr.decode()
    doc = json.loads(ok.stdout)
    assert doc["summary"]["fail"] == 0
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE compliance_users SET email = 'leak@example.com' WHERE id = 3"))
    engine.dispose()
    bad = subprocess.run(
        [*base, "--column", "compliance_users.email"], capture_output=True, env=env, check=False
    )
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["controls"]
    text_run = subprocess.run(
        [*base[:-1], "--column", "compliance_users.email"],
        capture_output=True,
        env=env,
        check=False,
    )
    assert b"[FAIL   ] data.columns_encrypted" in text_run.stdout
    assert b"leak@example.com" not in text_run.stdout


def test_verify_fails_when_the_audit_log_is_absent(tmp_path: Path) -> None:
    # A deleted audit log is missing evidence: the control fails, it is not skipped.
    data = tmp_path / "data"
    LocalKeyProvider(data).create_master_key()
    audit = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False)
    with EncryptionService(EncryptionServiceConfig(data_dir=data), observers=[audit]) as svc:
        audit.attach(svc)
        svc.encrypt(b"x", {"tenant_id": "t", "data_class": "pii"})
        audit.close()
    env = dict(os.environ, GLC_DATA_DIR=str(data))
    env.pop("GLC_AUDIT_URL", None)
    cmd = [sys.executable, "-m", "greenlang_crypto", "verify", "--json"]
    before = subprocess.run(cmd, capture_output=True, env=env, check=False)
    by = {c["control"]: c for c in json.loads(before.stdout)["controls"]}
    assert by["audit.chain"]["status"] == "pass", by["audit.chain"]
    (data / "audit.db").unlink()
    after = subprocess.run(cmd, capture_output=True, env=env, check=False)
    assert after.returncode == 1
    by = {c["control"]: c for c in json.loads(after.stdout)["controls"]}
    assert by["audit.chain"]["status"] == "fail"
    assert "missing" in by["audit.chain"]["detail"]
    assert not (data / "audit.db").exists()  # verifying must not recreate an empty log
