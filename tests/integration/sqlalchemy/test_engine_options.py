"""Binary result format (psycopg_engine_options) returns the same values as text format."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Date,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    insert,
    select,
)

from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import EncryptedBytes, EncryptedString, psycopg_engine_options

pytestmark = pytest.mark.integration


def test_binary_results_round_trip(pg_url: str, service: EncryptionService, unique: object) -> None:
    name = unique("engine_opts")  # type: ignore[operator]
    md = MetaData()
    table = Table(
        name,
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("email", EncryptedString(service, data_class="pii", tenant_id="t1")),
        Column("blob", EncryptedBytes(service, data_class="secret", tenant_id="t1")),
        Column("plain", String(50)),
        Column("amount", Numeric(10, 2)),
        Column("day", Date),
        Column("doc", JSON),
    )
    rows = [
        {
            "id": i,
            "email": f"user{i}@example.com" if i % 3 else None,
            "blob": bytes([i]) * i,
            "plain": f"p{i}",
            "amount": Decimal(i) / 4,
            "day": dt.date(2026, 1, 1 + i),
            "doc": {"n": i},
        }
        for i in range(1, 10)
    ]
    text_engine = create_engine(pg_url)
    binary_engine = create_engine(pg_url, **psycopg_engine_options())
    try:
        md.create_all(text_engine)
        with text_engine.begin() as conn:
            conn.execute(insert(table), rows)
        results = []
        for engine in (text_engine, binary_engine):
            with engine.connect() as conn:
                got = conn.execute(select(table).order_by(table.c.id)).mappings().all()
            results.append([dict(r) for r in got])
        assert results[0] == results[1] == rows
    finally:
        md.drop_all(text_engine)
        text_engine.dispose()
        binary_engine.dispose()
