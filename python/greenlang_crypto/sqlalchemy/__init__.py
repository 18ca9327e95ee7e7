"""SQLAlchemy column types, blind indexes, pgcrypto mode and migration jobs.

Importing this package installs the ORM hooks (row binding, blind-index filling) through
SQLAlchemy's ``mapper_configured`` event; Core usage needs nothing else. Front door rule: this
package calls only the :class:`~greenlang_crypto.service.EncryptionService`.
"""

from __future__ import annotations

from greenlang_crypto.sqlalchemy import orm as _orm  # noqa: F401 - installs the ORM hooks
from greenlang_crypto.sqlalchemy._common import FromRow, is_envelope
from greenlang_crypto.sqlalchemy.blind_index import (
    EMAIL,
    PHONE,
    BlindIndex,
    IndexValue,
    casefold,
    collapse_whitespace,
    digits,
    lookup,
    nfc,
    nfkc,
    strip,
)
from greenlang_crypto.sqlalchemy.engine import psycopg_engine_options
from greenlang_crypto.sqlalchemy.pgcrypto import PgcryptoString
from greenlang_crypto.sqlalchemy.types import (
    EncryptedBytes,
    EncryptedJSON,
    EncryptedString,
    EncryptedText,
    EncryptedType,
    SealedValue,
)

__all__ = [
    "EMAIL",
    "PHONE",
    "BlindIndex",
    "EncryptedBytes",
    "EncryptedJSON",
    "EncryptedString",
    "EncryptedText",
    "EncryptedType",
    "FromRow",
    "IndexValue",
    "PgcryptoString",
    "SealedValue",
    "casefold",
    "collapse_whitespace",
    "digits",
    "is_envelope",
    "lookup",
    "nfc",
    "nfkc",
    "psycopg_engine_options",
    "strip",
]
