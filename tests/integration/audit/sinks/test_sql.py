"""The PostgreSQL audit sink on a server: the chain and tamper evidence, its tables in the
``encryption`` schema with the packaged columns, a log left in ``public`` moved with its chain,
two logs never merged, and a record PostgreSQL cannot store sent to the dead-letter file."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto._core import DataKey, EnvelopeSealer
from greenlang_crypto.audit import AuditLog, AuditQuery, PostgresAuditSink
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import GreenlangCryptoError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sql import statements
from tests.conftest import pg_columns, pg_query

CTX = EncryptionContext(tenant_id="t1", data_class="pii")


def audit_stack(data_dir: Path, sink: Any) -> tuple[EncryptionService, AuditLog]:
    audit = AuditLog(sink, start_thread=False)
    svc = EncryptionService(EncryptionServiceConfig(data_dir=data_dir), observers=[audit])
    audit.attach(svc)
    return svc, audit


def _service(data_dir: Path) -> EncryptionService:
    LocalKeyProvider(data_dir).create_master_key()
    return EncryptionService(EncryptionServiceConfig(data_dir=data_dir))


@pytest.mark.integration
def test_postgres_sink_chain_and_tamper(pg_database: str, tmp_path: Path) -> None:
    import psycopg

    data_dir = tmp_path / "data"
    LocalKeyProvider(data_dir).create_master_key()
    _svc, audit = audit_stack(data_dir, PostgresAuditSink(pg_database))
    for i in range(5):
        audit.record("admin_action", actor=f"op{i}")
    assert audit.verify().ok
    page = audit.query(AuditQuery(actor="op3"))
    assert [r.seq for r in page] == [4]
    with psycopg.connect(pg_database, autocommit=True, options="-c search_path=encryption") as conn:
        conn.execute("UPDATE glc_audit SET actor = 'mallory' WHERE seq = 2")
    result = audit.verify()
    assert [(p.seq, p.kind) for p in result.problems] == [(2, "edited")]
    audit.close()


@pytest.mark.integration
def test_postgres_sink_uses_the_encryption_schema(pg_database: str, tmp_path: Path) -> None:
    svc = _service(tmp_path)
    audit = AuditLog(PostgresAuditSink(pg_database), start_thread=False, anchors=[])
    audit.attach(svc)
    audit.record("admin_action", actor="op")
    assert audit.verify().ok
    audit.close()
    svc.close()
    tables = pg_query(
        pg_database,
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_name LIKE 'glc_audit%%' ORDER BY 1, 2",
    )
    assert tables == [("encryption", "glc_audit"), ("encryption", "glc_audit_meta")]
    # The same columns as `db migrate` creates: one DDL, in the sql/ files.
    import psycopg

    migrated = f"m_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {migrated}")
        for statement in statements("audit", "postgresql", schema=migrated):
            conn.execute(statement)
    for table in ("glc_audit", "glc_audit_meta"):
        assert pg_columns(pg_database, "encryption", table) == pg_columns(
            pg_database, migrated, table
        )


@pytest.mark.integration
def test_an_audit_log_left_in_public_moves_with_its_chain(pg_database: str, tmp_path: Path) -> None:
    svc = _service(tmp_path)
    # A log created before V012: its tables in `public`, records chained under the root key.
    old = AuditLog(PostgresAuditSink(pg_database, schema="public"), start_thread=False, anchors=[])
    old.attach(svc)
    for i in range(4):
        old.record("admin_action", actor=f"op{i}")
    old.close()
    assert pg_query(pg_database, "SELECT count(*) FROM public.glc_audit") == [(4,)]

    new = AuditLog(PostgresAuditSink(pg_database), start_thread=False, anchors=[])
    new.attach(svc)
    result = new.verify()
    assert result.ok and result.records == 4
    new.record("admin_action", actor="op4")
    assert new.verify().records == 5
    new.close()
    svc.close()
    assert pg_query(pg_database, "SELECT to_regclass('public.glc_audit')") == [(None,)]
    assert pg_query(pg_database, "SELECT count(*) FROM encryption.glc_audit") == [(5,)]


@pytest.mark.integration
def test_two_audit_logs_are_never_merged(pg_database: str, tmp_path: Path) -> None:
    import psycopg

    svc = _service(tmp_path)
    for schema in ("encryption", "public"):
        log = AuditLog(
            PostgresAuditSink(pg_database, schema=schema), start_thread=False, anchors=[]
        )
        log.attach(svc)
        log.record("admin_action", actor=schema)
        log.close()
    # Both hold records: neither is moved or dropped (an operator merges them).
    with psycopg.connect(pg_database, autocommit=True) as conn:
        for statement in statements("audit", "postgresql"):
            conn.execute(statement)
    assert pg_query(pg_database, "SELECT actor FROM public.glc_audit") == [("public",)]
    assert pg_query(pg_database, "SELECT actor FROM encryption.glc_audit") == [("encryption",)]
    svc.close()


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
