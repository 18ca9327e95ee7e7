"""Re-encryption moves a column written in envelope format v1 to v2, on real PostgreSQL.

A column encrypted before v2 (or by a fleet kept on v1 by the commitment policy) is under the
current key version already, so only its format tells the job it still needs work. Once the
job is done, a reader with the strict commitment policy opens every row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Engine

from greenlang_crypto import parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import CommitmentPolicyError
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy.migrate import ColumnJob
from tests.integration.sqlalchemy._jobs import fill_plaintext, people_table, spec

pytestmark = pytest.mark.integration


def _with_policy(data_dir: Path, policy: str) -> EncryptionService:
    return EncryptionService(EncryptionServiceConfig(data_dir=data_dir, commitment_policy=policy))


def _formats(engine: Engine, name: str) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT email FROM {name} WHERE email IS NOT NULL")).all()
    out: dict[int, int] = {}
    for (value,) in rows:
        v = parse_envelope(bytes(value)).version
        out[v] = out.get(v, 0) + 1
    return out


def test_reencryption_moves_v1_rows_to_v2(
    pg_engine: Engine, service: EncryptionService, data_dir: Path, table_name: str
) -> None:
    legacy = _with_policy(data_dir, "forbid_encrypt_allow_decrypt")
    md = MetaData()
    people_table(legacy, table_name, md)
    md.create_all(pg_engine)
    try:
        fill_plaintext(pg_engine, table_name, 40)
        ColumnJob(pg_engine, legacy, spec(table_name), batch_size=15).run()
        assert _formats(pg_engine, table_name) == {1: 40}
        strict = _with_policy(data_dir, "require_encrypt_require_decrypt")
        people_strict: Any = people_table(strict, table_name, MetaData())
        with pg_engine.connect() as conn, pytest.raises(CommitmentPolicyError):
            conn.execute(people_strict.select()).all()
        # Same key version, older format: the default service's re-encryption picks them up.
        job = ColumnJob(pg_engine, service, spec(table_name), mode="reencrypt", batch_size=15)
        report = job.run()
        assert report.written == 40 and not report.quarantined
        assert _formats(pg_engine, table_name) == {2: 40}
        again = ColumnJob(pg_engine, service, spec(table_name), mode="reencrypt", batch_size=15)
        again.reset()
        assert again.run().written == 0
        # Every row now opens under the strict policy, through the model's own type.
        with pg_engine.connect() as conn:
            emails = conn.execute(people_strict.select()).all()
        assert len(emails) == 40 and all("@example.com" in r.email for r in emails)
        strict.close()
    finally:
        legacy.close()
        md.drop_all(pg_engine)
