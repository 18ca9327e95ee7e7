"""pgcrypto mode: a column encrypted *in the database server* with ``pgp_sym_encrypt``.

Use it only for interoperability or server-side needs (SQL that must decrypt in the server,
another client reading the column with pgcrypto). Prefer :class:`~.types.EncryptedString`:
measured in PEERS.md, pgcrypto with ``cipher-algo=aes256`` and its default iterated-SHA-1 S2K
costs about 16x a plain column on insert and 100-240x on select, uses OpenPGP CFB rather than
GCM (no binding to table, column or tenant), and sends the key to the server with every
statement (it can surface in server logs with ``log_statement``/``auto_explain`` of bound
values, in ``pg_stat_activity`` of failing statements, and to anyone who can trace the server).

The key never appears in SQL text: it is a bound parameter whose value is computed at
execution time. It is a per-column secret derived from the service: the hex of
``blind_index_key("pgcrypto|<table>.<column>", version=key_version).compute(b"pgcrypto")``
(HKDF from the index root key of ``key_version``, default 1). It is pinned to that version:
retiring that index key version makes the column unreadable, so re-encrypt pgcrypto columns
before retiring it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, LargeBinary, Table, Text, bindparam, func, literal_column
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.types import TypeDecorator

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.sqlalchemy._common import ServiceRef, resolve_service

__all__ = ["PgcryptoString"]

_OPTIONS = "'cipher-algo=aes256'"


class PgcryptoString(TypeDecorator[str]):
    """A str column encrypted by PostgreSQL pgcrypto (``pgp_sym_encrypt``, AES-256).

    PostgreSQL only, and the ``pgcrypto`` extension must be installed (V011 enables it).

    Args:
        service: An EncryptionService or a zero-argument callable returning one.
        key_version: The index key version the column secret is derived from.
        location: Override ``"table.column"`` in the key purpose (default: the column's).
    """

    impl = LargeBinary
    cache_ok = True

    def __init__(self, service: ServiceRef, *, key_version: int = 1, location: str | None = None):
        super().__init__()
        self.service = service
        self.key_version = key_version
        self.location = location
        self._where: str | None = location
        self._secret: str | None = None

    def _attach(self, table: Table, column: Column[Any]) -> None:
        if self.location is None:
            self._where = f"{table.fullname}.{column.name}"

    def _key(self) -> str:
        # Called at execution time (bindparam callable_), so the secret is never part of a
        # compiled or cached statement.
        secret = self._secret
        if secret is None:
            if self._where is None:
                raise InvalidArgumentError("PgcryptoString is not attached to a table column")
            key = resolve_service(self.service).blind_index_key(
                f"pgcrypto|{self._where}", self.key_version
            )
            secret = self._secret = key.compute(b"pgcrypto", 32).hex()
        return secret

    def _key_param(self) -> BindParameter[str]:
        return bindparam(None, callable_=self._key, type_=Text(), unique=True)

    def bind_expression(self, bindvalue: BindParameter[Any]) -> ColumnElement[Any]:
        """``pgp_sym_encrypt(:value, :key, 'cipher-algo=aes256')``."""
        return func.pgp_sym_encrypt(
            bindvalue, self._key_param(), literal_column(_OPTIONS), type_=LargeBinary()
        )

    def column_expression(self, colexpr: ColumnElement[Any]) -> ColumnElement[Any]:
        """``pgp_sym_decrypt(column, :key)``, returning text."""
        return func.pgp_sym_decrypt(colexpr, self._key_param(), type_=Text())

    def bind_processor(self, dialect: Dialect) -> None:
        """The plaintext str is sent as is (the server encrypts it)."""
        return None

    def result_processor(self, dialect: Dialect, coltype: Any) -> None:
        """The server returns the decrypted text."""
        return None

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        """Unused (see :meth:`bind_processor`); present for the TypeDecorator contract."""
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """Unused (see :meth:`result_processor`)."""
        return value
