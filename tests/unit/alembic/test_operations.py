"""The Alembic operations without a database: the SQL they emit offline, what they refuse,
the autogenerate rewrite of a type change, the deferred CLI command and ``configure``.

Their runs against PostgreSQL (the job inside a migration, phase 2, pytest-alembic's checks)
are in tests/integration/alembic/test_migrations.py.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import render_python_code
from alembic.operations import Operations, ops
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import greenlang_crypto.alembic as glc_alembic
from greenlang_crypto.alembic import configure
from greenlang_crypto.alembic.operations import (
    AlterColumnFromEncryptedOp,
    AlterColumnToEncryptedOp,
    cli_command,
    encrypted_type_changes,
    model_path,
)
from greenlang_crypto.cli import build_parser
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.sqlalchemy import EMAIL, PHONE, BlindIndex, EncryptedString, strip
from greenlang_crypto.sqlalchemy.commands import column_spec
from greenlang_crypto.sqlalchemy.migrate import ColumnSpec


def _service() -> Any:
    raise AssertionError("no test here encrypts")


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "members"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(
        EncryptedString(_service, data_class="pii", tenant_id="acme")
    )
    email_bidx: Mapped[bytes] = mapped_column(BlindIndex("email", normalizer=EMAIL, length=8))


@pytest.fixture
def offline() -> Iterator[io.StringIO]:
    """``op`` bound to an offline PostgreSQL migration (``alembic upgrade --sql``)."""
    out = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": out}
    )
    with Operations.context(context):
        yield out


def test_the_type_change_keeps_each_plaintext_as_its_utf8_bytes(offline: io.StringIO) -> None:
    from alembic import op

    op.alter_column_to_encrypted("users", "E-mail", schema="app")
    op.alter_column_from_encrypted("users", "E-mail", schema="app", type_=sa.String(255))
    sql = offline.getvalue()
    assert (
        'ALTER TABLE app.users ALTER COLUMN "E-mail" TYPE bytea '
        "USING convert_to(CAST(\"E-mail\" AS text), 'UTF8')"
    ) in sql
    assert (
        'ALTER TABLE app.users ALTER COLUMN "E-mail" TYPE VARCHAR(255) '
        "USING convert_from(\"E-mail\", 'UTF8')"
    ) in sql


def test_phase_two_offline_adds_and_drops_the_named_constraint(offline: io.StringIO) -> None:
    from alembic import op

    op.forbid_plaintext(Member.email)
    op.allow_plaintext("members", "email")
    sql = offline.getvalue()
    assert (
        "ALTER TABLE members ADD CONSTRAINT glc_email_is_envelope CHECK (email IS NULL OR "
        "(octet_length(email) > 0 AND get_byte(email, 0) = 250))"
    ) in sql
    assert "ALTER TABLE members DROP CONSTRAINT IF EXISTS glc_email_is_envelope" in sql


def test_a_job_needs_an_online_migration_unless_deferred(
    offline: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    from alembic import op

    with pytest.raises(InvalidArgumentError, match="online migration"):
        op.encrypt_column(Member.email)
    command = op.encrypt_column(Member.email, defer=True, batch_size=200)
    assert command == (
        "greenlang-crypto db encrypt-column --model "
        "tests.unit.alembic.test_operations:Member.email --batch-size 200 "
        "--state-schema encryption --phase 1"
    )
    # Offline, stdout is usually the SQL script itself (``alembic upgrade --sql > x.sql``):
    # the command goes into the script as SQL comments, and nothing else is printed.
    assert capsys.readouterr().out == ""
    assert op.reencrypt_column(Member.email, defer=True).startswith("greenlang-crypto db reencrypt")
    script = offline.getvalue()
    assert command in script
    lines = [line for line in script.splitlines() if line.strip()]
    assert lines and all(line.startswith("--") for line in lines), script


def test_a_deferred_job_offline_leaves_a_runnable_script(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The default output of ``alembic upgrade --sql`` is stdout: what the deferral writes
    # there must be SQL (comments), or the script fails where it is run.
    import sys

    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": sys.stdout}
    )
    from alembic import op

    with Operations.context(context):
        op.alter_column_to_encrypted("members", "email")
        op.encrypt_column(Member.email, defer=True)
    script = capsys.readouterr().out
    assert "greenlang-crypto db encrypt-column" in script
    for line in script.splitlines():
        if "greenlang-crypto" in line or "deferred" in line:
            assert line.startswith("-- "), line


def test_phase_two_offline_quotes_a_schema_qualified_table() -> None:
    class Qualified(Base):
        __tablename__ = "Members"
        __table_args__ = {"schema": "App"}  # noqa: RUF012
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(
            'E"mail', EncryptedString(_service, data_class="pii", tenant_id="acme")
        )

    out = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": out}
    )
    from alembic import op

    with Operations.context(context):
        op.forbid_plaintext(Qualified.email)
    sql = out.getvalue()
    assert 'ALTER TABLE "App"."Members" ADD CONSTRAINT "glc_E""mail_is_envelope" CHECK' in sql


def test_the_type_change_offline_refuses_a_bytea_column_when_run(offline: io.StringIO) -> None:
    # Offline the catalog cannot be read: the script checks the type itself when it runs,
    # since a bytea column cast to text would store each value's hex escape form.
    from alembic import op

    op.alter_column_to_encrypted("users", "E-mail", schema="app")
    sql = offline.getvalue()
    guard = sql.index("RAISE EXCEPTION")
    assert guard < sql.index("ALTER TABLE app.users ALTER COLUMN")
    assert "format_type(a.atttypid, a.atttypmod) = 'bytea'" in sql
    assert "'app.users'" in sql and "'E-mail'" in sql


def test_operations_refuse_other_databases() -> None:
    context = MigrationContext.configure(
        dialect_name="sqlite", opts={"as_sql": True, "output_buffer": io.StringIO()}
    )
    from alembic import op

    with Operations.context(context):
        with pytest.raises(InvalidArgumentError, match="PostgreSQL"):
            op.alter_column_to_encrypted("users", "email")
        with pytest.raises(InvalidArgumentError, match="PostgreSQL"):
            op.encrypt_column(Member.email, defer=True)


def test_the_deferred_command_is_one_the_cli_accepts_for_the_same_column() -> None:
    spec = ColumnSpec.from_model(Member.email, version_column="email_kv")
    by_model = cli_command("encrypt", spec, model=model_path(Member.email))
    by_flags = cli_command("encrypt", spec)
    for command in (by_model, by_flags):
        argv = shlex.split(command)
        assert argv[0] == "greenlang-crypto"
        args = build_parser().parse_args(argv[1:])
        parsed = column_spec(args)
        # The default purpose is left to the CLI, which derives the same one.
        assert replace(parsed, index_purpose=parsed.index_purpose or "members.email") == spec
        assert (args.batch_size, args.state_schema, args.phase) == (500, "encryption", 1)


def test_flags_spell_out_every_setting() -> None:
    spec = ColumnSpec(
        "app.people",
        "phone",
        pk="pid",
        data_class="contact",
        tenant_column="org",
        bind_row=True,
        kind="bytes",
        index_column="phone_bidx",
        index_purpose="custom",
        index_normalizer=PHONE,
        index_length=4,
        index_per_tenant=True,
    )
    argv = shlex.split(cli_command("reencrypt", spec, batch_size=50, state_schema="jobs"))
    args = build_parser().parse_args(argv[1:])
    assert column_spec(args) == spec
    assert (args.batch_size, args.state_schema) == (50, "jobs")
    assert not hasattr(args, "phase")


def test_a_normalizer_the_cli_cannot_name_needs_the_model() -> None:
    spec = ColumnSpec(
        "t", "c", tenant_id="a", index_column="c_bidx", index_normalizer=(strip, strip)
    )
    with pytest.raises(InvalidArgumentError, match="normalizer"):
        cli_command("encrypt", spec)
    assert "--model m:C.c" in cli_command("encrypt", spec, model="m:C.c")


def test_model_paths_only_for_importable_attributes() -> None:
    assert model_path(Member.email) == "tests.unit.alembic.test_operations:Member.email"
    assert model_path(Member.__table__.c.email) is None

    def local() -> Any:
        class Local(Base):
            __tablename__ = "locals"
            id: Mapped[int] = mapped_column(primary_key=True)

        return Local.id

    assert model_path(local()) is None


def _alter(**kw: Any) -> ops.AlterColumnOp:
    return ops.AlterColumnOp("users", "email", **kw)


def _rewrite(op: ops.AlterColumnOp) -> list[Any]:
    script = ops.MigrationScript(
        "rev",
        ops.UpgradeOps(ops=[ops.ModifyTableOps("users", [op])]),
        ops.DowngradeOps(ops=[]),
    )
    encrypted_type_changes(MigrationContext.configure(dialect_name="postgresql"), "rev", [script])
    assert script.upgrade_ops is not None
    (table_ops,) = script.upgrade_ops.ops
    return list(table_ops.ops)  # type: ignore[attr-defined]


def test_autogenerate_writes_a_text_to_encrypted_change_with_its_cast() -> None:
    enc = EncryptedString(_service, data_class="pii", tenant_id="acme")
    (change,) = _rewrite(_alter(existing_type=sa.String(255), modify_type=enc))
    assert isinstance(change, AlterColumnToEncryptedOp)
    assert isinstance(change.from_type, sa.String) and change.from_type.length == 255
    # A change of nullability too stays an ordinary alter_column after the type change.
    change, rest = _rewrite(_alter(existing_type=sa.Text(), modify_type=enc, modify_nullable=False))
    assert isinstance(change, AlterColumnToEncryptedOp)
    assert isinstance(rest, ops.AlterColumnOp)
    assert (rest.modify_type, rest.modify_nullable) == (None, False)
    (back,) = _rewrite(_alter(existing_type=enc, modify_type=sa.String(255)))
    assert isinstance(back, AlterColumnFromEncryptedOp)
    # bytea to an encrypted type is no type change in the database: left alone.
    (same,) = _rewrite(_alter(existing_type=sa.LargeBinary(), modify_type=enc))
    assert isinstance(same, ops.AlterColumnOp) and same.modify_type is enc


def test_the_rewritten_change_renders_as_the_operation() -> None:
    enc = EncryptedString(_service, data_class="pii", tenant_id="acme")
    (change,) = _rewrite(_alter(existing_type=sa.String(255), modify_type=enc))
    code = render_python_code(
        ops.UpgradeOps(ops=[ops.ModifyTableOps("users", [change])]),
        migration_context=MigrationContext.configure(dialect_name="postgresql"),
    )
    assert "op.alter_column_to_encrypted('users', 'email', from_type=sa.String(length=255))" in code
    code = render_python_code(
        ops.UpgradeOps(ops=[ops.ModifyTableOps("users", [change.reverse()])]),
        migration_context=MigrationContext.configure(dialect_name="postgresql"),
    )
    assert "op.alter_column_from_encrypted('users', 'email', type_=sa.String(length=255))" in code


def test_configure_adds_the_hooks_and_keeps_the_projects() -> None:
    calls: list[str] = []

    def their_render(type_: str, obj: Any, ctx: Any) -> Any:
        calls.append(type_)
        return "theirs"

    def their_directives(context: Any, revision: Any, directives: Any) -> None:
        calls.append("directives")

    def their_filter(obj: Any, name: Any, type_: str, reflected: bool, compare_to: Any) -> bool:
        return name != "skip_me"

    service = object()
    options = configure(
        {
            "target_metadata": Base.metadata,
            "render_item": their_render,
            "process_revision_directives": their_directives,
            "include_object": their_filter,
        },
        service=service,
    )
    assert options["target_metadata"] is Base.metadata
    assert options["glc_service"] is service
    ctx = MigrationContext.configure(dialect_name="postgresql")
    from alembic.autogenerate.api import AutogenContext

    autogen = AutogenContext(ctx)
    enc = EncryptedString(_service, data_class="pii", tenant_id="acme")
    assert options["render_item"]("type", enc, autogen).startswith("greenlang_crypto.")
    assert options["render_item"]("type", sa.Integer(), autogen) == "theirs"
    script = ops.MigrationScript("r", ops.UpgradeOps(ops=[]), ops.DowngradeOps(ops=[]))
    options["process_revision_directives"](ctx, "r", [script])
    assert calls == ["type", "directives"]
    table = sa.Table("t", sa.MetaData(), schema="encryption")
    assert options["include_object"](table, "t", "table", True, None) is False
    assert (
        options["include_object"](
            sa.Table("skip_me", sa.MetaData()), "skip_me", "table", False, None
        )
        is False
    )
    assert options["include_object"](
        sa.Table("users", sa.MetaData()), "users", "table", False, None
    )
    assert options["include_name"]("encryption", "schema", {}) is False
    bare = configure()
    assert bare["render_item"] is glc_alembic.render_item
    assert bare["process_revision_directives"] is encrypted_type_changes
    assert "glc_service" not in bare


def test_the_package_resolves_names_lazily() -> None:
    assert glc_alembic.ciphertext_check_name("email") == "glc_email_is_envelope"
    with pytest.raises(AttributeError):
        glc_alembic.no_such_name  # noqa: B018
