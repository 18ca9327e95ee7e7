"""An Alembic project that encrypts a column, against a real PostgreSQL.

The project (written to a temporary directory) has a small ``users`` model and a ``vault``
table holding every library column type. Revision 1 creates ``users`` with a plaintext
``email``. Revision 2 is what ``alembic revision --autogenerate`` writes with
:func:`greenlang_crypto.alembic.configure` in ``env.py`` (the type change as
``op.alter_column_to_encrypted``, the blind-index column, the ``vault`` table), plus the two
lines a developer adds: ``op.encrypt_column(User.email)`` and ``op.forbid_plaintext``.

``alembic`` runs in a subprocess with a timeout, under Alembic's default transaction
settings (``transaction_per_migration`` off), so a job waiting on the migration's own locks
fails the test instead of hanging it. pytest-alembic's standard checks run in process.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from greenlang_crypto.providers.local import LocalKeyProvider
from tests.conftest import pg_private_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
ALEMBIC_TIMEOUT = 120

MODELS = '''
"""The application's models (the state after revision 2)."""

import functools
import os

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import (
    EMAIL,
    BlindIndex,
    EncryptedBytes,
    EncryptedJSON,
    EncryptedString,
    EncryptedText,
    FromRow,
    PgcryptoString,
    casefold,
    strip,
)
from greenlang_crypto.sqlalchemy.migrate import ciphertext_check


@functools.cache
def service():
    return EncryptionService(EncryptionServiceConfig(data_dir=os.environ["APP_DATA_DIR"]))


def current_tenant():
    return "acme"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __table_args__ = (ciphertext_check("email"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(sa.String(100))
    email: Mapped[str | None] = mapped_column(
        EncryptedString(service, data_class="pii", tenant_id="acme")
    )
    email_bidx: Mapped[bytes | None] = mapped_column(
        BlindIndex("email", normalizer=EMAIL), index=True
    )


class Vault(Base):
    __tablename__ = "vault"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(40))
    note: Mapped[str | None] = mapped_column(
        EncryptedText(service, data_class="notes", tenant_id=FromRow("tenant"))
    )
    note_bidx: Mapped[bytes | None] = mapped_column(
        BlindIndex("note", normalizer=(strip, casefold), length=8, per_tenant=True)
    )
    blob: Mapped[bytes | None] = mapped_column(
        EncryptedBytes(service, data_class="files", tenant_id=current_tenant)
    )
    doc: Mapped[object | None] = mapped_column(
        EncryptedJSON(service, data_class="docs", tenant_id="acme", allow_plaintext=True)
    )
    secret: Mapped[str | None] = mapped_column(PgcryptoString(service, key_version=1))
'''

ENV = """
import os

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

import {app} as app
from greenlang_crypto.alembic import configure


def run(connection):
    # Alembic's defaults: one transaction for the whole upgrade.
    context.configure(
        **configure({{"connection": connection, "target_metadata": app.Base.metadata}})
    )
    with context.begin_transaction():
        context.run_migrations()


connectable = context.config.attributes.get("connection")
if connectable is None:
    connectable = create_engine(os.environ["APP_DATABASE_URL"], poolclass=pool.NullPool)
if isinstance(connectable, Connection):
    run(connectable)
else:
    with connectable.connect() as connection:
        run(connection)
"""

MAKO = '''"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""
from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade():
    ${upgrades if upgrades else "pass"}


def downgrade():
    ${downgrades if downgrades else "pass"}
'''

REVISION_1 = '''"""plaintext users

Revision ID: 0001
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("email", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade():
    op.drop_table("users")
'''

END = "    # ### end Alembic commands ###"
START = "    # ### commands auto generated by Alembic - please adjust! ###"


@dataclass
class Project:
    """A temporary Alembic project and the service its model uses."""

    root: Path
    app: str
    data_dir: Path
    revision_2: str

    def env(self, url: str) -> dict[str, str]:
        return dict(
            os.environ,
            APP_DATABASE_URL=url,
            APP_DATA_DIR=str(self.data_dir),
            PYTHONPATH=os.pathsep.join([str(self.root), str(REPO / "python"), str(REPO)]),
        )

    def alembic(self, url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs ``alembic <args>`` in a subprocess; a hang (deadlock) fails the test."""
        argv = [sys.executable, "-m", "alembic", "-c", str(self.root / "alembic.ini"), *args]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=ALEMBIC_TIMEOUT,
                env=self.env(url),
                cwd=self.root,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"alembic {' '.join(args)} hung for {ALEMBIC_TIMEOUT} s: {exc.stderr!r}")
        if check and done.returncode != 0:
            pytest.fail(f"alembic {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done


def write_project(root: Path, data_dir: Path) -> Project:
    app = f"glc_app_{uuid.uuid4().hex[:8]}"
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / f"{app}.py").write_text(MODELS)
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nprepend_sys_path = %(here)s\n"
        "path_separator = os\n"
    )
    (root / "migrations" / "env.py").write_text(ENV.format(app=app))
    (root / "migrations" / "script.py.mako").write_text(MAKO)
    (root / "migrations" / "versions" / "0001_users.py").write_text(REVISION_1)
    return Project(root, app, data_dir, "")


def add_data_operations(source: str, app: str, *, defer: bool = False) -> str:
    """What a developer adds to the autogenerated revision 2: the data operations."""
    upgrade, _, downgrade = source.partition("def downgrade():")
    if defer:
        extra = f"    op.encrypt_column({app}.User.email, defer=True)\n"
    else:
        extra = (
            f"    op.encrypt_column({app}.User.email)\n    op.forbid_plaintext({app}.User.email)\n"
        )
    upgrade = upgrade.replace(END, extra + END)
    downgrade = downgrade.replace(START, START + '\n    op.allow_plaintext("users", "email")')
    return f"import {app}\n" + upgrade + "def downgrade():" + downgrade


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("alembic-keys")
    LocalKeyProvider(d).create_master_key()
    return d


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> str:
    """Revision 2 as ``alembic revision --autogenerate`` writes it (against revision 1)."""
    project = write_project(tmp_path_factory.mktemp("autogen"), data_dir)
    with pg_private_database("glc_alembic_gen", sqlalchemy_url=True) as url:
        project.alembic(url, "upgrade", "0001")
        project.alembic(
            url, "revision", "--autogenerate", "-m", "encrypt email", "--rev-id", "0002"
        )
    (path,) = (project.root / "migrations" / "versions").glob("0002_*.py")
    return path.read_text().replace(project.app, "{app}")


def make_project(root: Path, data_dir: Path, generated: str, *, defer: bool = False) -> Project:
    project = write_project(root, data_dir)
    revision = add_data_operations(
        generated.replace("{app}", project.app), project.app, defer=defer
    )
    (root / "migrations" / "versions" / "0002_encrypt_email.py").write_text(revision)
    project.revision_2 = revision
    return project


@pytest.fixture
def project(tmp_path: Path, data_dir: Path, generated: str) -> Project:
    return make_project(tmp_path / "proj", data_dir, generated)


@pytest.fixture
def db_url() -> Iterator[str]:
    with pg_private_database("glc_alembic", sqlalchemy_url=True) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


EMAILS = {i: f"user{i}@example.com" for i in range(1, 41)}
EMAILS.update({41: "Zoë.Ångström@Example.COM", 42: "", 43: None})  # type: ignore[dict-item]


def fill_plaintext(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO users (id, name, email) VALUES (:id, :name, :email)"),
            [{"id": i, "name": f"n{i}", "email": e} for i, e in EMAILS.items()],
        )


def test_autogenerate_writes_runnable_code_for_every_library_type(generated: str) -> None:
    assert "op.alter_column_to_encrypted('users', 'email', from_type=sa.VARCHAR(length=255))" in (
        generated
    )
    assert "op.alter_column_from_encrypted('users', 'email', type_=sa.VARCHAR(length=255))" in (
        generated
    )
    assert "import greenlang_crypto.sqlalchemy.blind_index" in generated
    assert "import greenlang_crypto.sqlalchemy.types" in generated
    assert "import greenlang_crypto.sqlalchemy.pgcrypto" in generated
    assert (
        "greenlang_crypto.sqlalchemy.blind_index.BlindIndex(source='email', "
        "normalizer=greenlang_crypto.sqlalchemy.blind_index.EMAIL, length=16)"
    ) in generated
    assert "tenant_id=greenlang_crypto.alembic.ddl_only_tenant" in generated
    assert "greenlang_crypto.sqlalchemy.FromRow('tenant')" in generated
    # Not the bare alter_column that has no cast from text to bytea.
    assert "op.alter_column('users', 'email'" not in generated


@pytest.mark.timeout(300)
def test_upgrade_encrypts_the_rows_inside_the_migration_and_check_is_clean(
    project: Project, db_url: str, engine: Engine
) -> None:
    project.alembic(db_url, "upgrade", "0001")
    fill_plaintext(engine)
    project.alembic(db_url, "upgrade", "head")
    with engine.connect() as conn:
        raw = dict(conn.execute(text("SELECT id, email FROM users")).all())
        assert raw[43] is None
        assert all(bytes(v)[0] == 0xFA for k, v in raw.items() if k != 43)
        # The job's run was committed with the migration, every range done.
        states = (
            conn.execute(
                text(
                    "SELECT state FROM encryption.glc_job_ranges "
                    "WHERE starts_with(job, 'encrypt:users.email:p1@')"
                )
            )
            .scalars()
            .all()
        )
        assert states and set(states) == {"done"}
    # The rows decrypt through the model, and the blind index finds them.
    sys.path.insert(0, str(project.root))
    os.environ["APP_DATA_DIR"] = str(project.data_dir)
    try:
        import importlib

        from sqlalchemy.orm import Session

        from greenlang_crypto.sqlalchemy import lookup

        app = importlib.import_module(project.app)
        with Session(engine) as session:
            users = {u.id: u.email for u in session.query(app.User)}
            assert users == EMAILS
            (found,) = lookup(session, app.User.email, "  zoë.ångström@example.com ")
            assert found.id == 41
            session.add(app.User(id=100, name="new", email="new@example.com"))
            session.commit()
        app.service().close()
    finally:
        sys.path.remove(str(project.root))
        os.environ.pop("APP_DATA_DIR", None)
    # Phase 2: the named constraint keeps plaintext out.
    with pytest.raises(IntegrityError, match="glc_email_is_envelope"):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id, email) VALUES (200, 'x'::bytea)"))
    done = project.alembic(db_url, "check")
    assert "No new upgrade operations detected" in done.stdout + done.stderr


@pytest.mark.timeout(300)
def test_a_failing_job_rolls_the_whole_revision_back(
    project: Project, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    project.alembic(db_url, "upgrade", "0001")
    fill_plaintext(engine)
    # The job cannot encrypt: the service's data directory has no keys.
    empty = tmp_path / "no-keys"
    empty.mkdir()
    project.data_dir = empty
    failed = project.alembic(db_url, "upgrade", "head", check=False)
    assert failed.returncode != 0
    with engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        email_type = conn.execute(
            text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'users' AND column_name = 'email'"
            )
        ).scalar()
        # The type change before the job was rolled back with it: nothing changed.
        assert (version, email_type) == ("0001", "character varying")
        assert conn.execute(text("SELECT email FROM users WHERE id = 1")).scalar() == EMAILS[1]
        assert conn.execute(text("SELECT to_regclass('vault')")).scalar() is None


@pytest.mark.timeout(300)
def test_a_deferred_job_prints_the_cli_command_that_finishes_it(
    tmp_path: Path, data_dir: Path, generated: str, db_url: str, engine: Engine
) -> None:
    project = make_project(tmp_path / "deferred", data_dir, generated, defer=True)
    project.alembic(db_url, "upgrade", "0001")
    fill_plaintext(engine)
    upgraded = project.alembic(db_url, "upgrade", "head")
    (command,) = re.findall(r"^\s*(greenlang-crypto db encrypt-column .*)$", upgraded.stdout, re.M)
    assert f"--model {project.app}:User.email" in command
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT email FROM users WHERE id = 1")).scalar()
        assert bytes(raw) == EMAILS[1].encode()  # deferred: still plaintext
    argv = shlex.split(command)
    cli = [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data_dir), *argv[1:]]
    done = subprocess.run(
        [*cli, "--url", db_url, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=ALEMBIC_TIMEOUT,
        env=project.env(db_url),
        cwd=project.root,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with engine.connect() as conn:
        raw = dict(conn.execute(text("SELECT id, email FROM users")).all())
        assert all(bytes(v)[0] == 0xFA for k, v in raw.items() if k != 43)
        # The job the migration would have run, under its name: a rerun of the command (or
        # op.encrypt_column in a later revision) joins or rescans this job, never another.
        jobs = conn.execute(text("SELECT DISTINCT job FROM encryption.glc_job_ranges")).scalars()
        assert [j.partition("@")[0] for j in jobs] == ["encrypt:users.email:p1"]


@pytest.mark.timeout(600)
def test_pytest_alembic_standard_checks(
    project: Project, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytest_alembic
    from pytest_alembic.config import Config
    from pytest_alembic.tests import default

    monkeypatch.setenv("APP_DATA_DIR", str(project.data_dir))
    monkeypatch.syspath_prepend(str(project.root))
    config = Config(config_options={"file": str(project.root / "alembic.ini")})
    for check in (
        default.test_single_head_revision,
        default.test_upgrade,
        default.test_model_definitions_match_ddl,
        default.test_up_down_consistency,
    ):
        with pg_private_database("glc_alembic_std", sqlalchemy_url=True) as url:
            engine = create_engine(url)
            try:
                with pytest_alembic.runner(config=config, engine=engine) as runner:
                    check(runner)
            finally:
                engine.dispose()


def test_the_model_and_a_fresh_database_from_create_all_agree(
    project: Project, db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The constraint the model declares is the one forbid_plaintext creates: same name.
    import importlib

    monkeypatch.syspath_prepend(str(project.root))
    app = importlib.import_module(project.app)
    app.Base.metadata.create_all(engine)
    with engine.connect() as conn:
        names = (
            conn.execute(
                text("SELECT conname FROM pg_constraint WHERE conrelid = 'users'::regclass")
            )
            .scalars()
            .all()
        )
    assert "glc_email_is_envelope" in names
