"""Alembic environment: the app's models, the library's hooks and operations.

``greenlang_crypto.alembic.configure`` adds what this project needs from the library:

* autogenerate writes the encrypted types with their imports, and a text column turning
  encrypted as ``op.alter_column_to_encrypted`` (a plain ``ALTER ... TYPE bytea`` has no cast);
* the library's own schema (``encryption.*``: job state, key store on PostgreSQL) stays out of
  ``alembic check`` and autogenerate;
* ``op.encrypt_column``, ``op.reencrypt_column``, ``op.forbid_plaintext`` and friends are
  registered, running with the app's own service.

Alembic's default transaction settings are kept: the whole upgrade is one transaction, and
the column jobs run inside it (a failing job rolls the revision back with everything else).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from greenlang_crypto.alembic import configure
from sqlalchemy import create_engine, pool

from app import crypto
from app.models import Base

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)


def _url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("set DATABASE_URL (postgresql+psycopg://user@host/db)")
    return url


def run_offline() -> None:
    """``alembic upgrade --sql``: the DDL as a script (the column jobs need a live database)."""
    options = {"url": _url(), "target_metadata": Base.metadata, "literal_binds": True}
    context.configure(**configure(options, service=crypto.service))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrates the database of ``$DATABASE_URL``."""
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            options = {"connection": connection, "target_metadata": Base.metadata}
            context.configure(**configure(options, service=crypto.service))
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()
        crypto.close()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
