"""A local key provider, a service and an audit log observing it, for the audit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto.audit import AuditLog, SqliteAuditSink
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

CTX = {"tenant_id": "tenant-secret-name", "data_class": "pii"}
PLAINTEXT = b"audit-must-never-see-this"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory holding a local master key."""
    d = tmp_path / "data"
    LocalKeyProvider(d).create_master_key()
    return d


def audit_stack(
    data_dir: Path, sink: Any = None, *, per_op: bool = False, **kw: Any
) -> tuple[EncryptionService, AuditLog]:
    """A service on ``data_dir`` and an attached audit log (SQLite unless ``sink``), no flusher."""
    audit = AuditLog(sink or SqliteAuditSink(data_dir / "audit.db"), start_thread=False, **kw)
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=data_dir), observers=[audit], per_operation_events=per_op
    )
    audit.attach(svc)
    return svc, audit


@pytest.fixture
def stack(data_dir: Path) -> Iterator[tuple[EncryptionService, AuditLog]]:
    """:func:`audit_stack` on ``data_dir``; the log is closed afterwards."""
    svc, audit = audit_stack(data_dir)
    yield svc, audit
    audit.close()


def traffic(svc: EncryptionService, n: int = 5) -> bytes:
    """``n`` encrypt/decrypt round trips of :data:`PLAINTEXT`; returns the last envelope."""
    env = b""
    for _ in range(n):
        env = svc.encrypt(PLAINTEXT, CTX)
        assert svc.decrypt(env, CTX) == PLAINTEXT
    return env
