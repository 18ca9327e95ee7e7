"""pgcrypto mode: a column encrypted *in the database server* with ``pgp_sym_encrypt``.

Use it only for interoperability or server-side needs (SQL that must decrypt in the server,
another client reading the column with pgcrypto). Prefer :class:`~.types.EncryptedString`:
measured in ``benches/bench_sqlalchemy.py``, pgcrypto with ``cipher-algo=aes256`` and its
default iterated-SHA-1 S2K costs about 16x a plain column on insert and 100-240x on select, uses
OpenPGP CFB rather than GCM (no binding to table, column or tenant), and sends the key to the
server with every statement (it can surface in server logs with
``log_statement``/``auto_explain`` of bound values, in ``pg_stat_activity`` of failing
statements, and to anyone who can trace the server).

The key never appears in SQL text: it is a bound parameter whose value is computed at
execution time. It is a per-column secret derived from the service: the hex of
``blind_index_key("pgcrypto|<table>.<column>", version=key_version).compute(b"pgcrypto")``
(HKDF from the index root key of ``key_version``, default 1). It is pinned to that version:
retiring that index key version makes the column unreadable, so re-encrypt pgcrypto columns
before retiring it.

Statement logging check. The key is fixed per column and key version, so one copy in a log
exposes the column for good. Before the first statement that uses a pgcrypto key on a
connection, the server's settings are read; when bound values would be logged
(``log_statement`` ``all`` or ``mod``, ``log_min_duration_statement`` or
``log_min_duration_sample`` >= 0, unless ``log_parameter_max_length = 0``;
``log_parameter_max_length_on_error`` != 0; or ``auto_explain`` loaded with
``auto_explain.log_min_duration`` >= 0, whose plans show the values as constants) the
statement is refused with :class:`~greenlang_crypto.exceptions.ConfigurationError`, unless the
column opts in with ``allow_logged_key=True`` (then the key *will* be in the server log: treat
the log as holding the column key). A failing statement's SQLAlchemy exception never shows
its parameters, whatever the engine's ``hide_parameters``.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from sqlalchemy import Column, LargeBinary, Table, Text, bindparam, event, func, literal_column
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.types import TypeDecorator

from greenlang_crypto import _forks
from greenlang_crypto.exceptions import ConfigurationError, InvalidArgumentError
from greenlang_crypto.sqlalchemy._common import ServiceRef, resolve_service

__all__ = ["PgcryptoString"]

_OPTIONS = "'cipher-algo=aes256'"
_MARK = "pgp_sym_"
_SETTINGS_SQL = (
    "SELECT current_setting('log_statement'), "
    "current_setting('log_min_duration_statement'), "
    "current_setting('log_min_duration_sample', true), "
    "current_setting('log_parameter_max_length', true), "
    "current_setting('log_parameter_max_length_on_error', true), "
    "current_setting('auto_explain.log_min_duration', true)"
)
_install_lock = threading.Lock()
_forks.fresh_locks_after_fork(sys.modules[__name__], "_install_lock")
_installed: list[bool] = []


def _ms(value: str | None) -> int:
    """A duration setting in ms (``-1`` when unset or disabled)."""
    if value is None or value == "":
        return -1
    digits = value.strip()
    for unit, factor in (("ms", 1), ("min", 60_000), ("s", 1000), ("h", 3_600_000)):
        if digits.endswith(unit):
            try:
                return int(float(digits[: -len(unit)]) * factor)
            except ValueError:
                return 0
    try:
        return int(digits)
    except ValueError:
        return 0  # unknown form: assume it logs


def logging_exposure(settings: tuple[Any, ...]) -> list[str]:
    """Which server settings would log bound values (empty when none).

    Args:
        settings: The row of ``_SETTINGS_SQL``.
    """
    stmt, min_dur, sample, max_len, max_len_err, auto_explain = settings
    out: list[str] = []
    params_logged = max_len is None or str(max_len).strip() not in ("0", "0B")
    if params_logged:
        if str(stmt) in ("all", "mod"):
            out.append(f"log_statement={stmt}")
        if _ms(min_dur) >= 0:
            out.append(f"log_min_duration_statement={min_dur}")
        if _ms(sample) >= 0:
            out.append(f"log_min_duration_sample={sample}")
    if max_len_err is not None and str(max_len_err).strip() not in ("0", "0B"):
        out.append(f"log_parameter_max_length_on_error={max_len_err}")
    if auto_explain is not None and _ms(auto_explain) >= 0:
        out.append(f"auto_explain.log_min_duration={auto_explain}")
    return out


def _pgcrypto_types(context: Any) -> list[PgcryptoString]:
    compiled = getattr(context, "compiled", None)
    binds = getattr(compiled, "binds", None) or {}
    found: list[PgcryptoString] = []
    for bp in binds.values():
        owner = getattr(getattr(bp, "callable", None), "__self__", None)
        if isinstance(owner, PgcryptoString):
            found.append(owner)
    return found


def _before_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    if _MARK not in statement or conn.dialect.name != "postgresql":
        return
    types = _pgcrypto_types(context)
    if not types or all(t.allow_logged_key for t in types):
        return
    info = conn.connection.info  # per DBAPI connection: checked once per server session
    exposure = info.get("glc_pgcrypto_exposure")
    if exposure is None:
        check = cursor.connection.cursor()
        try:
            check.execute(_SETTINGS_SQL)
            exposure = info["glc_pgcrypto_exposure"] = logging_exposure(tuple(check.fetchone()))
        finally:
            check.close()
    if exposure:
        raise ConfigurationError(
            "the PostgreSQL server would log the pgcrypto column key ("
            + ", ".join(exposure)
            + "); disable that logging (or set log_parameter_max_length = 0), or opt in "
            "with PgcryptoString(..., allow_logged_key=True)"
        )


def _on_error(ctx: Any) -> None:
    # The key is a bound parameter of every pgcrypto statement; the exception text must not
    # show it even on an engine without hide_parameters.
    statement = ctx.statement or ""
    exc = ctx.sqlalchemy_exception
    if _MARK in statement and exc is not None and hasattr(exc, "hide_parameters"):
        exc.hide_parameters = True


def _install() -> None:
    with _install_lock:
        if not _installed:
            event.listen(Engine, "before_cursor_execute", _before_execute)
            event.listen(Engine, "handle_error", _on_error)
            _installed.append(True)


class PgcryptoString(TypeDecorator[str]):
    """A str column encrypted by PostgreSQL pgcrypto (``pgp_sym_encrypt``, AES-256).

    PostgreSQL only, and the ``pgcrypto`` extension must be installed (V011 enables it).

    Args:
        service: An EncryptionService or a zero-argument callable returning one.
        key_version: The index key version the column secret is derived from.
        location: Override ``"table.column"`` in the key purpose (default: the column's).
        allow_logged_key: Use the column even when the server logs bound values (the key is
            then in the server log; see the module docstring).
    """

    impl = LargeBinary
    cache_ok = True

    def __init__(
        self,
        service: ServiceRef,
        *,
        key_version: int = 1,
        location: str | None = None,
        allow_logged_key: bool = False,
    ):
        super().__init__()
        _install()
        self.service = service
        self.key_version = key_version
        self.location = location
        self.allow_logged_key = allow_logged_key
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
