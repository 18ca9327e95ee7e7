"""Autogenerate rendering of the library's column types: the code Alembic writes must run.

Each test renders a table through Alembic's own ``render_python_code`` (what ``alembic
revision --autogenerate`` writes into a revision), then executes that code the way a revision
runs, with only the imports the rendering asked for, against an offline PostgreSQL migration
context, and compares the rebuilt types and the DDL they emit with the model's.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import render_python_code
from alembic.autogenerate.api import AutogenContext
from alembic.operations import Operations, ops
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects import postgresql

from greenlang_crypto.alembic import ddl_only_tenant, render_item
from greenlang_crypto.alembic.render import render_type
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.sqlalchemy import (
    EMAIL,
    PHONE,
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
from greenlang_crypto.sqlalchemy.types import EncryptedType


def current_tenant() -> str:
    return "acme"


class AppEmail(EncryptedString):
    """An application's own subclass (not importable from a migration)."""

    cache_ok = True


def library_columns() -> list[sa.Column[Any]]:
    """One column of every library type, with every argument the rendering carries."""
    svc = object()  # never used: rendering reads the settings only
    return [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(20)),
        sa.Column("s", EncryptedString(svc, data_class="pii", tenant_id="acme")),
        sa.Column("t", EncryptedText(svc, data_class="notes", tenant_id=FromRow("tenant"))),
        sa.Column(
            "b",
            EncryptedBytes(
                svc,
                data_class="files",
                tenant_id=current_tenant,
                location="other.table|b",
                allow_plaintext=True,
            ),
        ),
        sa.Column("j", EncryptedJSON(svc, data_class="docs", tenant_id="acme", skip_erased=True)),
        sa.Column("a", AppEmail(svc, data_class="pii", tenant_id="acme", bind_row=True)),
        sa.Column("s_bidx", BlindIndex("s", normalizer=EMAIL)),
        sa.Column(
            "t_bidx",
            BlindIndex(
                "t",
                purpose="notes.t",
                normalizer=(strip, casefold),
                length=8,
                per_tenant=True,
                orm_deferred=False,
            ),
        ),
        sa.Column("b_bidx", BlindIndex("b", normalizer=PHONE, length=32)),
        sa.Column("custom_bidx", BlindIndex("s", normalizer=lambda v: v[::-1], length=4)),
        sa.Column("p", PgcryptoString(svc, key_version=3, location="x.p", allow_logged_key=True)),
        sa.Column("p1", PgcryptoString(svc)),
    ]


def render_table(table: sa.Table, *, hook: bool = True) -> tuple[str, set[str]]:
    """The ``op.create_table`` code autogenerate writes for ``table``, and its imports."""
    contexts: list[AutogenContext] = []

    def capture(type_: str, obj: Any, autogen_context: AutogenContext) -> Any:
        contexts.append(autogen_context)
        return render_item(type_, obj, autogen_context) if hook else False

    code = render_python_code(
        ops.UpgradeOps(ops=[ops.CreateTableOp.from_table(table)]),
        render_item=capture,
        migration_context=MigrationContext.configure(dialect_name="postgresql"),
    )
    return code, (set(contexts[0].imports) if contexts else set())


def run_revision(code: str, imports: set[str]) -> tuple[str, dict[str, Any]]:
    """Runs rendered revision code as a revision would: offline, on PostgreSQL.

    Returns the SQL it emitted and the types it built (by column name).
    """
    out = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": out}
    )
    built: dict[str, Any] = {}
    source = "\n".join(
        ["import sqlalchemy as sa", "from alembic import op", *sorted(imports), "def upgrade():"]
        + [line if line.startswith("    ") else "    " + line for line in code.splitlines()]
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, "<revision>", "exec"), namespace)
    real_create = Operations.create_table

    def create_table(self: Operations, name: str, *columns: Any, **kw: Any) -> Any:
        for c in columns:
            if isinstance(c, sa.Column):
                built[c.name] = c.type
        return real_create(self, name, *columns, **kw)

    with Operations.context(context):
        Operations.create_table = create_table  # type: ignore[method-assign]
        try:
            namespace["upgrade"]()
        finally:
            Operations.create_table = real_create  # type: ignore[method-assign]
    return out.getvalue(), built


def test_every_library_type_renders_to_code_that_imports_builds_and_emits_the_same_ddl() -> None:
    table = sa.Table("vault", sa.MetaData(), *library_columns())
    code, imports = render_table(table)
    sql, built = run_revision(code, imports)
    assert "CREATE TABLE vault" in sql
    for column in table.columns:
        rebuilt = built[column.name]
        assert rebuilt.compile(dialect=postgresql.dialect()) == column.type.compile(
            dialect=postgresql.dialect()
        )
        if isinstance(column.type, sa.types.TypeDecorator):
            assert f"{column.name} BYTEA" in sql
    s, t, b, j, a = (built[n] for n in "stbja")
    assert (type(s), s.data_class, s.tenant_id, s.bind_row) == (
        EncryptedString,
        "pii",
        "acme",
        False,
    )
    assert (type(t), t.tenant_id, t.bind_row) == (EncryptedText, FromRow("tenant"), True)
    assert (type(b), b.location, b.allow_plaintext) == (EncryptedBytes, "other.table|b", True)
    assert b.tenant_id is ddl_only_tenant
    assert (type(j), j.skip_erased) == (EncryptedJSON, True)
    # The application's subclass becomes the library type it derives from.
    assert (type(a), a.bind_row) == (EncryptedString, True)
    sb, tb, bb, cb = (built[n] for n in ("s_bidx", "t_bidx", "b_bidx", "custom_bidx"))
    assert (sb.source, sb.normalizer, sb.length) == ("s", EMAIL, 16)
    assert (tb.source, tb.purpose, tb.normalizer, tb.length) == (
        "t",
        "notes.t",
        (strip, casefold),
        8,
    )
    assert (tb.per_tenant, tb.orm_deferred) == (True, False)
    assert (bb.normalizer, bb.length) == (PHONE, 32)
    # A normalizer of the application's own is not DDL and is left out.
    assert (cb.source, cb.normalizer, cb.length) == ("s", (), 4)
    p, p1 = built["p"], built["p1"]
    assert (p.key_version, p.location, p.allow_logged_key) == (3, "x.p", True)
    assert (p1.key_version, p1.location, p1.allow_logged_key) == (1, None, False)


def test_without_the_hook_the_rendered_code_does_not_run() -> None:
    # What a project without render_item gets: no import, then no arguments.
    table = sa.Table(
        "users",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email_bidx", BlindIndex("email", normalizer=EMAIL)),
    )
    code, imports = render_table(table, hook=False)
    assert imports == set()
    with pytest.raises(NameError, match="greenlang_crypto"):
        run_revision(code, imports)
    with pytest.raises(TypeError, match="source"):
        run_revision(code, {"import greenlang_crypto.sqlalchemy.blind_index"})


def test_a_rendered_type_has_no_service_and_cannot_encrypt() -> None:
    imports: set[str] = set()
    source = render_type(
        EncryptedString(object(), data_class="pii", tenant_id=current_tenant), imports
    )
    assert source is not None
    namespace: dict[str, Any] = {}
    exec("\n".join(sorted(imports)), namespace)
    rebuilt = eval(source, namespace)
    assert rebuilt.service is None
    with pytest.raises(InvalidArgumentError, match="DDL only"):
        ddl_only_tenant()
    with pytest.raises(InvalidArgumentError):
        rebuilt.encrypt_value("x@example.com", tenant_id="acme")


@pytest.mark.parametrize(
    ("type_", "kind"),
    [
        (sa.String(20), "type"),
        (sa.LargeBinary(), "type"),
        (EncryptedString(object(), data_class="pii", tenant_id="acme"), "column"),
    ],
)
def test_other_types_and_items_are_left_to_alembic(type_: Any, kind: str) -> None:
    context = AutogenContext(MigrationContext.configure(dialect_name="postgresql"))
    assert render_item(kind, type_, context) is False
    assert context.imports == set()


def test_the_lookup_parameter_type_is_not_a_column_type() -> None:
    from greenlang_crypto.sqlalchemy.blind_index import _BYTES

    assert render_type(_BYTES, set()) is None
    assert render_type(EncryptedType(object(), data_class="x", tenant_id="t"), set()) is None
