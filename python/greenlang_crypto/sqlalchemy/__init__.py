"""SQLAlchemy column types, blind indexes, pgcrypto mode and migration jobs.

The first use of any name exported here installs the ORM hooks (row binding, blind-index
filling) through SQLAlchemy's ``mapper_configured`` event; Core usage needs nothing else.
Names are resolved lazily so that the CLI can list its ``db`` commands without importing
SQLAlchemy (an optional dependency: ``pip install "greenlang-crypto[sqlalchemy]"``). Front door
rule: this package calls only the :class:`~greenlang_crypto.service.EncryptionService`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenlang_crypto.sqlalchemy._common import FromRow, is_envelope
    from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec, JobSpecMismatchError
    from greenlang_crypto.sqlalchemy._purge import PurgeReport, purge_erased
    from greenlang_crypto.sqlalchemy.blind_index import (
        EMAIL,
        PHONE,
        BlindIndex,
        IndexValue,
        alookup,
        casefold,
        collapse_whitespace,
        digits,
        lookup,
        nfc,
        nfkc,
        strip,
    )
    from greenlang_crypto.sqlalchemy.engine import async_engine_options, psycopg_engine_options
    from greenlang_crypto.sqlalchemy.pgcrypto import PgcryptoString
    from greenlang_crypto.sqlalchemy.types import (
        EncryptedBytes,
        EncryptedJSON,
        EncryptedString,
        EncryptedText,
        EncryptedType,
        SealedColumnError,
        SealedValue,
    )

#: Where each exported name lives (module under this package).
_EXPORTS = {
    "FromRow": "_common",
    "ColumnSpec": "_job_spec",
    "JobSpecMismatchError": "_job_spec",
    "PurgeReport": "_purge",
    "purge_erased": "_purge",
    "is_envelope": "_common",
    **{
        name: "blind_index"
        for name in (
            "EMAIL",
            "PHONE",
            "BlindIndex",
            "IndexValue",
            "alookup",
            "casefold",
            "collapse_whitespace",
            "digits",
            "lookup",
            "nfc",
            "nfkc",
            "strip",
        )
    },
    "async_engine_options": "engine",
    "psycopg_engine_options": "engine",
    "PgcryptoString": "pgcrypto",
    **{
        name: "types"
        for name in (
            "EncryptedBytes",
            "EncryptedJSON",
            "EncryptedString",
            "EncryptedText",
            "EncryptedType",
            "SealedColumnError",
            "SealedValue",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # The ORM hooks go in before any type can be used, as an eager import would have done.
    importlib.import_module(f"{__name__}.orm")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "EMAIL",
    "PHONE",
    "BlindIndex",
    "ColumnSpec",
    "EncryptedBytes",
    "EncryptedJSON",
    "EncryptedString",
    "EncryptedText",
    "EncryptedType",
    "FromRow",
    "IndexValue",
    "JobSpecMismatchError",
    "PgcryptoString",
    "PurgeReport",
    "SealedColumnError",
    "SealedValue",
    "alookup",
    "async_engine_options",
    "casefold",
    "collapse_whitespace",
    "digits",
    "is_envelope",
    "lookup",
    "nfc",
    "nfkc",
    "psycopg_engine_options",
    "purge_erased",
    "strip",
]
