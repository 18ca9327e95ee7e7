"""A real Alembic project next to ``greenlang-crypto db migrate``: ``alembic check`` stays clean.

A tiny Alembic environment (one model, one revision) is written to a temporary directory and
run with the ``alembic`` command against a private database. After ``alembic upgrade head``
and ``greenlang-crypto db migrate``:

* a default environment (the default schema only) sees nothing of the library;
* an environment comparing every schema (``include_schemas=True``) sees the library's
  ``encryption.*`` tables unless it uses ``greenlang_crypto.alembic``'s filters;
* ``glc_*`` objects an older release left in ``public`` are hidden by ``include_object``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import pg_private_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]

_INI = """\
[alembic]
script_location = %(here)s/migrations

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)s %(name)s %(message)s
"""

# The project's env.py: how it filters is chosen per run through the environment.
_ENV = """\
import os

from alembic import context
from sqlalchemy import create_engine

from models import metadata
from greenlang_crypto.alembic import include_name, include_object

filters = os.environ["APP_FILTERS"].split(",")
options = {}
if "object" in filters:
    options["include_object"] = include_object
if "name" in filters:
    options["include_name"] = include_name

engine = create_engine(os.environ["APP_DB_URL"])
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_schemas=os.environ["APP_ALL_SCHEMAS"] == "1",
        **options,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

_MODELS = """\
from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, MetaData, Table, Text

metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("email", Text, nullable=False),
    Column("email_enc", LargeBinary),
    Column("email_key_version", Integer),
    Column("email_bidx", LargeBinary),
    Column("display_name", Text),
)
Index("ix_users_email_bidx", users.c.email_bidx)
"""

_REVISION = """\
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("email_enc", sa.LargeBinary),
        sa.Column("email_key_version", sa.Integer),
        sa.Column("email_bidx", sa.LargeBinary),
        sa.Column("display_name", sa.Text),
    )
    op.create_index("ix_users_email_bidx", "users", ["email_bidx"])


def downgrade():
    op.drop_table("users")
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(project directory, SQLAlchemy URL of its own database)."""
    (tmp_path / "alembic.ini").write_text(_INI)
    (tmp_path / "models.py").write_text(_MODELS)
    migrations = tmp_path / "migrations"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "env.py").write_text(_ENV)
    (migrations / "versions" / "0001_users.py").write_text(_REVISION)
    with pg_private_database("glc_alembic", sqlalchemy_url=True) as url:
        yield tmp_path, url


def _run(
    argv: list[str], cwd: Path, url: str, *, filters: str = "", all_schemas: bool = False
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(cwd), str(REPO / "python")]),
        APP_DB_URL=url,
        APP_FILTERS=filters,
        APP_ALL_SCHEMAS="1" if all_schemas else "0",
    )
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _alembic(
    project: Path, url: str, *args: str, filters: str = "", all_schemas: bool = False
) -> subprocess.CompletedProcess[str]:
    return _run(
        [sys.executable, "-m", "alembic", "-c", str(project / "alembic.ini"), *args],
        project,
        url,
        filters=filters,
        all_schemas=all_schemas,
    )


def _check(project: Path, url: str, *, filters: str = "", all_schemas: bool = False) -> str:
    """Runs ``alembic check``; returns "" when it passes, else its complaint."""
    res = _alembic(project, url, "check", filters=filters, all_schemas=all_schemas)
    if res.returncode == 0:
        assert "No new upgrade operations detected" in res.stdout, res.stdout + res.stderr
        return ""
    out = res.stdout + res.stderr
    assert "New upgrade operations detected" in out, out
    return out


def _migrate(project: Path, url: str, *args: str) -> None:
    res = _run(
        [sys.executable, "-m", "greenlang_crypto", "db", "migrate", "--url", url, *args],
        project,
        url,
    )
    assert res.returncode == 0, res.stderr


def _sql(url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        for statement in statements:
            conn.execute(statement)


def test_alembic_check_passes_after_db_migrate_with_the_filters(
    project: tuple[Path, str],
) -> None:
    path, url = project
    up = _alembic(path, url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert _check(path, url) == ""  # the project alone is consistent
    _migrate(path, url)

    # The default schema only: nothing of the library is there to see (the reported bug:
    # the ledger in public, columns and indexes added to users).
    assert _check(path, url) == ""
    assert _check(path, url, filters="object") == ""

    # Every schema: without a filter Alembic wants to drop the library's tables.
    complaint = _check(path, url, all_schemas=True)
    assert "remove_table" in complaint and "glc_schema_migrations" in complaint
    assert "glc_deks" in complaint
    for filters in ("object", "name", "object,name"):
        assert _check(path, url, filters=filters, all_schemas=True) == "", filters


def test_include_object_hides_what_an_older_release_left_in_public(
    project: tuple[Path, str],
) -> None:
    path, url = project
    assert _alembic(path, url, "upgrade", "head").returncode == 0
    _migrate(path, url)
    # An older release's leftovers: an audit table it could not move (both held rows) and the
    # index its V011 put on the users table.
    _sql(
        url,
        "CREATE TABLE public.glc_audit (seq BIGINT PRIMARY KEY, hmac TEXT NOT NULL)",
        "CREATE INDEX glc_users_email_bidx ON users (email_bidx)",
    )
    complaint = _check(path, url)
    assert "remove_table" in complaint and "glc_audit" in complaint
    assert "remove_index" in complaint and "glc_users_email_bidx" in complaint
    assert _check(path, url, filters="object") == ""
    assert _check(path, url, filters="object,name", all_schemas=True) == ""
    # The project's own tables are still compared through the filter.
    _sql(url, "ALTER TABLE users ADD COLUMN nickname TEXT")
    complaint = _check(path, url, filters="object,name", all_schemas=True)
    assert "remove_column" in complaint and "nickname" in complaint


def test_the_example_columns_are_the_projects_to_model(project: tuple[Path, str]) -> None:
    # The example adds columns to the project's tables: Alembic must see them (they hold the
    # project's data), so a project that uses the example models them.
    path, url = project
    assert _alembic(path, url, "upgrade", "head").returncode == 0
    _migrate(path, url, "--example-columns")
    complaint = _check(path, url, filters="object,name", all_schemas=True)
    assert "phone_bidx" in complaint and "remove_column" in complaint
    assert "glc_users_email_bidx" not in complaint  # the example's index on a modelled column
    _migrate(path, url, "--down", "--example-columns")
    # Reverting the example dropped the modelled email_* columns too: Alembic sees it.
    assert "add_column" in _check(path, url, filters="object,name", all_schemas=True)
