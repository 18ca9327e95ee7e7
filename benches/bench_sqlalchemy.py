"""pytest-benchmark: encrypted column types against peers, in the same run (PostgreSQL).

Peers: a plain String column, sqlalchemy-utils StringEncryptedType(AesGcmEngine), pgcrypto
(``pgp_sym_encrypt``, aes256). 1,000 rows of 64-character values per round, so the suite
also runs quickly as a smoke test; benches/gate_sqlalchemy.py holds the gated ratios.
Skipped without GLC_PG_URL (``bash scripts/services.sh start``).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("sqlalchemy_utils")

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy_utils import StringEncryptedType
from sqlalchemy_utils.types.encrypted.encrypted_type import AesGcmEngine

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EncryptedString, PgcryptoString

ROWS = 1_000
VALUE = "user-0000@example.com" + "x" * 43
KINDS = ["plain", "greenlang", "sqlalchemy-utils", "pgcrypto"]


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Engine, dict[str, Table]]]:
    url = os.environ.get("GLC_PG_URL")
    if not url:
        pytest.skip("GLC_PG_URL not set")
    data_dir = tempfile.mkdtemp(prefix="glc-bench-sa-")
    LocalKeyProvider(data_dir).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=data_dir))
    engine = create_engine(url)
    md = MetaData()
    suffix = uuid.uuid4().hex[:8]
    types: dict[str, Any] = {
        "plain": String(100),
        "greenlang": EncryptedString(svc, data_class="pii", tenant_id="t1"),
        "sqlalchemy-utils": StringEncryptedType(String, os.urandom(32).hex(), AesGcmEngine),
        "pgcrypto": PgcryptoString(svc),
    }
    tables = {
        kind: Table(
            f"bench_{kind.replace('-', '_')}_{suffix}",
            md,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("v", typ),
        )
        for kind, typ in types.items()
    }
    md.create_all(engine)
    rows = [{"id": i, "v": VALUE} for i in range(ROWS)]
    with engine.begin() as conn:
        for table in tables.values():
            conn.execute(insert(table), rows)
    yield engine, tables
    md.drop_all(engine)
    engine.dispose()
    svc.close()


@pytest.mark.parametrize("kind", KINDS)
def bench_insert_1000_rows(
    benchmark: Any, setup: tuple[Engine, dict[str, Table]], kind: str
) -> None:
    engine, tables = setup
    table = tables[kind]
    rows = [{"id": ROWS + i, "v": VALUE} for i in range(ROWS)]

    def run() -> None:
        with engine.begin() as conn:
            conn.execute(insert(table), rows)
            conn.execute(text(f"DELETE FROM {table.name} WHERE id >= {ROWS}"))

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("kind", KINDS)
def bench_select_1000_rows(
    benchmark: Any, setup: tuple[Engine, dict[str, Table]], kind: str
) -> None:
    engine, tables = setup
    table = tables[kind]
    stmt = select(table.c.id, table.c.v)

    def run() -> None:
        with engine.connect() as conn:
            got = conn.execute(stmt).all()
        assert len(got) == ROWS and got[0][1] == VALUE

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
