"""pgcrypto mode: server-side encryption; the key travels only as a bound parameter."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, event, insert, select, text
from sqlalchemy.engine import Engine

from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import PgcryptoString

pytestmark = pytest.mark.integration


def test_round_trip_and_key_never_in_sql_text(
    pg_engine: Engine, service: EncryptionService, table_name: str
) -> None:
    md = MetaData()
    t = Table(
        table_name,
        md,
        Column("id", Integer, primary_key=True),
        Column("secret", PgcryptoString(lambda: service)),
    )
    md.create_all(pg_engine)
    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(pg_engine, "before_cursor_execute", capture)
    try:
        key = t.c.secret.type._key()
        ins = insert(t).values(id=1, secret="hello 🔐")
        sel = select(t.c.secret).where(t.c.id == 1)
        for stmt in (ins, sel):
            assert key not in str(stmt) and key not in str(stmt.compile(pg_engine))
        with pg_engine.begin() as conn:
            conn.execute(ins)
            conn.execute(insert(t), [{"id": 2, "secret": None}, {"id": 3, "secret": ""}])
            assert conn.execute(sel).scalar() == "hello 🔐"
            assert dict(conn.execute(select(t.c.id, t.c.secret)).all()) == {
                1: "hello 🔐",
                2: None,
                3: "",
            }
            raw = conn.execute(text(f"SELECT secret FROM {table_name} WHERE id = 1")).scalar()
            assert b"hello" not in bytes(raw)
            # Another client with the same secret can read it with plain SQL (interop).
            assert (
                conn.execute(
                    text(f"SELECT pgp_sym_decrypt(secret, :k) FROM {table_name} WHERE id = 1"),
                    {"k": key},
                ).scalar()
                == "hello 🔐"
            )
        assert statements and all(key not in s for s in statements)
        assert any("pgp_sym_encrypt" in s and "cipher-algo=aes256" in s for s in statements)
    finally:
        event.remove(pg_engine, "before_cursor_execute", capture)
        md.drop_all(pg_engine)
