"""Audit attacks the threat model names that other tests do not cover.

* A log rebuilt under the genuine chain key (an insider who can unwrap the root key) still
  fails against a checkpoint anchored before the rewrite.
* A forged envelope whose header carries a key version PostgreSQL's INTEGER cannot hold makes
  the audit sink refuse that failure record: it goes to the dead-letter file, a failure record
  naming it enters the chain, and the records after it are stored.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto._core import DataKey, EnvelopeSealer
from greenlang_crypto.audit import AuditEntry, AuditLog, PostgresAuditSink, SqliteAuditSink
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import GreenlangCryptoError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

CTX = EncryptionContext(tenant_id="t1", data_class="pii")


def _service(data: Path) -> EncryptionService:
    if not LocalKeyProvider(data).versions():
        LocalKeyProvider(data).create_master_key()
    return EncryptionService(EncryptionServiceConfig(data_dir=data, keyring_refresh_seconds=0))


def test_a_log_rebuilt_under_the_genuine_key_fails_against_an_earlier_checkpoint(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    svc = _service(data)
    audit = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False)
    audit.attach(svc)
    for i in range(6):
        audit.record("key_rotate", actor="op", details={"i": i})
    audit.close()  # anchors the head (seq 6)

    # The insider re-chains six records of their choosing with the real chain key and swaps
    # them in, head pointer included: every record MAC is valid.
    insider = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False, anchors=[])
    insider.attach(svc)
    chain = insider._chain_key()
    forged = chain.seal(
        [AuditEntry(action="key_rotate", actor="someone-else") for _ in range(6)], 0, None
    )
    insider.sink.close()
    db = sqlite3.connect(data / "audit.db")
    with db:
        db.execute("DELETE FROM glc_audit")
        for r in forged:
            e = r.entry
            db.execute(
                "INSERT INTO glc_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (r.seq, e.time, e.actor, e.action, e.outcome, None, None, None, None, None,
                 None, "{}", r.hmac),
            )  # fmt: skip
        db.execute(
            "UPDATE glc_audit_meta SET value = ? WHERE name = 'head'",
            (f"{forged[-1].seq}:{forged[-1].hmac}",),
        )
    db.close()
    # Without the anchor the rebuilt chain is internally consistent...
    bare = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False, anchors=[])
    bare.bind(svc)
    assert bare.verify().ok
    bare.sink.close()
    # ...but the checkpoint anchored before the rewrite names another head at seq 6.
    check = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False)
    check.bind(svc)
    result = check.verify()
    check.sink.close()
    svc.close()
    assert not result.ok
    assert any(p.seq == 6 for p in result.problems), result.problems


@pytest.fixture
def pg_database() -> Iterator[str]:
    url = os.environ.get("GLC_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("GLC_PG_URL is not set (CI must start PostgreSQL: scripts/services.sh)")
        pytest.skip("GLC_PG_URL not set; start services with scripts/services.sh")
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"glc_audit_attack_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{dsn.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.integration
def test_a_header_value_the_sink_cannot_store_is_dead_lettered(
    pg_database: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    LocalKeyProvider(data).create_master_key()
    audit = AuditLog(PostgresAuditSink(pg_database), start_thread=False)
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=data, keyring_refresh_seconds=0), observers=[audit]
    )
    audit.attach(svc)
    # Header fields are the attacker's: a key version of 2^32 - 1 fits the envelope's u32
    # but not PostgreSQL's INTEGER column.
    forged = EnvelopeSealer(
        DataKey.generate(), key_version=2**32 - 1, context=CTX.canonical, dek_id=1
    ).seal(b"x")
    with pytest.raises(GreenlangCryptoError):
        svc.decrypt(forged, CTX)
    svc.encrypt(b"after", CTX)  # a later event (a new DEK) must still reach the chain
    audit.flush()
    assert audit.buffered == 0 and audit.rejected == 1
    actions = [r.entry.action for r in audit.tail(20)]
    assert "audit_record_rejected" in actions and "key_generated" in actions
    assert audit.verify().ok
    dead = audit.dead_letter
    assert dead is not None
    lines = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [(d["why"], d["action"], d["key_version"]) for d in lines] == [
        ("rejected", "decryption_failed", 2**32 - 1)
    ]
    assert dead.stat().st_mode & 0o777 == 0o600
    audit.close()
    svc.close()
