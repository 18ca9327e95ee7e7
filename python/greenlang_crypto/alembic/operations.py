# ruff: noqa: S608
# SQL text here is assembled only from identifiers quoted by the dialect's identifier preparer
# and from type DDL compiled by the dialect; no value is ever part of it.
"""Alembic operations for encrypting columns: the type change, the column jobs, phase 2.

Importing :mod:`greenlang_crypto.alembic` registers them on Alembic's ``op``:

* ``op.alter_column_to_encrypted(table, column)``: the text column becomes ``bytea`` with
  ``USING convert_to(CAST(col AS text), 'UTF8')``, so each plaintext is kept as its UTF-8
  bytes, which the column job recognizes as plaintext (an envelope starts with 0xFA, a byte
  UTF-8 never contains). Reverse: ``op.alter_column_from_encrypted``, which refuses while any
  value is ciphertext.
* ``op.encrypt_column(User.email)`` and ``op.reencrypt_column(User.email)``: the resumable
  column job of ``greenlang-crypto db encrypt-column`` / ``db reencrypt``, run on the
  migration's own connection, inside its transaction (each batch a SAVEPOINT), so it works
  under Alembic's default transaction settings: a job on a connection of its own would wait
  for the locks the migration's open transaction holds, while the migration waits for the job.
  ``defer=True`` prints the equivalent CLI command instead, for a table too large for one
  migration transaction; the CLI job then runs (and resumes) under the same job name.
* ``op.forbid_plaintext(User.email)``: phase 2: fails if any value is plaintext, then adds the
  CHECK constraint named :func:`~greenlang_crypto.sqlalchemy.migrate.ciphertext_check_name`
  (``glc_<column>_is_envelope``), the name a model declares with
  :func:`~greenlang_crypto.sqlalchemy.migrate.ciphertext_check`. Reverse:
  ``op.allow_plaintext``.

All of them need PostgreSQL. The jobs need an online migration (they read and write rows);
under ``alembic upgrade --sql`` only ``defer=True`` works, and writes the command into the
script as SQL comments (stdout is the script there). Offline, the type change cannot read the
catalog first: the script checks, when it runs, that the column is not ``bytea`` already.
"""

from __future__ import annotations

import logging
import shlex
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from alembic.autogenerate import renderers
from alembic.autogenerate.render import _repr_type
from alembic.autogenerate.rewriter import Rewriter
from alembic.operations import MigrateOperation, Operations
from alembic.operations import ops as alembic_ops
from sqlalchemy import text

from greenlang_crypto.exceptions import GreenlangCryptoError, InvalidArgumentError
from greenlang_crypto.sqlalchemy._common import resolve_service
from greenlang_crypto.sqlalchemy.migrate import (
    ColumnJob,
    ColumnSpec,
    JobReport,
    ciphertext_check_name,
    enforce_ciphertext,
)

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext
    from alembic.runtime.migration import MigrationContext

    from greenlang_crypto.service import EncryptionService

__all__ = [
    "AllowPlaintextOp",
    "AlterColumnFromEncryptedOp",
    "AlterColumnToEncryptedOp",
    "ColumnJobFailedError",
    "EncryptColumnOp",
    "ForbidPlaintextOp",
    "ReencryptColumnOp",
    "cli_command",
    "encrypted_type_changes",
    "model_path",
]

_log = logging.getLogger("greenlang_crypto.alembic")

#: The key of :func:`greenlang_crypto.alembic.configure`'s service in Alembic's context options.
SERVICE_OPTION = "glc_service"


class ColumnJobFailedError(GreenlangCryptoError):
    """A column job in a migration left rows behind (quarantined or unprocessed).

    The migration fails and its transaction rolls back (the rows it changed included); the
    message lists the quarantined primary keys and reasons (never values).
    """


def _postgresql(operations: Operations, what: str) -> None:
    if operations.get_context().dialect.name != "postgresql":
        raise InvalidArgumentError(f"{what} needs PostgreSQL")


def _quoted(operations: Operations, name: str, schema: str | None = None) -> str:
    """``schema.name`` quoted as the dialect quotes identifiers, for SQL run through ``text``.

    A preparer for a driver that reads ``%`` as a placeholder doubles it, and ``text()``
    (which ``operations.execute`` wraps a string in) doubles it again: a column ``100%``
    would be looked for as ``100%%``. The preparer's doubling is undone here.
    """
    prep = operations.get_context().dialect.identifier_preparer
    doubles = prep.quote("%") != '"%"'
    parts = ([schema] if schema else []) + [name]
    quoted = (prep.quote(p) for p in parts)
    return ".".join(q.replace("%%", "%") if doubles else q for q in quoted)


def _column_type(operations: Operations, table: str, column: str, schema: str | None) -> str:
    """The column's current type (``format_type``), read from the catalog.

    Raises:
        InvalidArgumentError: No such column.
    """
    found = (
        operations.get_bind()
        .execute(
            text(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(:t) AND a.attname = :c AND NOT a.attisdropped"
            ),
            {"t": _quoted(operations, table, schema), "c": column},
        )
        .scalar()
    )
    if found is None:
        raise InvalidArgumentError(f"no column {column!r} in table {table!r}")
    return str(found)


# -- the type change ---------------------------------------------------------------------


@Operations.register_operation("alter_column_to_encrypted")
class AlterColumnToEncryptedOp(MigrateOperation):
    """``ALTER COLUMN ... TYPE bytea USING convert_to(CAST(col AS text), 'UTF8')``.

    Args:
        table_name: The table.
        column_name: The text (or JSON) column that is to hold envelopes.
        schema: The table's schema.
        from_type: The column's type before (for the reverse operation; default ``Text``).
    """

    def __init__(
        self,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        from_type: Any = None,
    ) -> None:
        self.table_name = table_name
        self.column_name = column_name
        self.schema = schema
        self.from_type = from_type

    @classmethod
    def alter_column_to_encrypted(
        cls,
        operations: Operations,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        from_type: Any = None,
    ) -> None:
        """Turns a text column into ``bytea``, each value kept as its UTF-8 bytes.

        The values are plaintext afterwards (phase 1): encrypt them with
        ``op.encrypt_column``. An index on the column is rebuilt over the bytes; an index on
        an encrypted column is useless (ciphertexts are random), so drop it and index the
        blind-index column instead (a UNIQUE constraint moves there too, unless the blind
        index is truncated). A server default must be dropped first.

        Raises:
            InvalidArgumentError: Not PostgreSQL; online, the column is missing or already
                ``bytea`` (a cast of bytea to text would store its hex escape form).
        """
        operations.invoke(cls(table_name, column_name, schema=schema, from_type=from_type))

    def reverse(self) -> AlterColumnFromEncryptedOp:
        """The type change back (``convert_from``), refused while any value is ciphertext."""
        return AlterColumnFromEncryptedOp(
            self.table_name, self.column_name, schema=self.schema, type_=self.from_type
        )


@Operations.register_operation("alter_column_from_encrypted")
class AlterColumnFromEncryptedOp(MigrateOperation):
    """``ALTER COLUMN ... TYPE <text type> USING convert_from(col, 'UTF8')`` (plaintext only).

    Args:
        table_name: The table.
        column_name: The ``bytea`` column holding plaintext UTF-8.
        schema: The table's schema.
        type_: The type to return to (default ``Text``).
    """

    def __init__(
        self,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        type_: Any = None,
    ) -> None:
        self.table_name = table_name
        self.column_name = column_name
        self.schema = schema
        self.type_ = type_

    @classmethod
    def alter_column_from_encrypted(
        cls,
        operations: Operations,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        type_: Any = None,
    ) -> None:
        """Turns a ``bytea`` column of plaintext UTF-8 back into text.

        Raises:
            InvalidArgumentError: Not PostgreSQL; online, some value is an envelope (nothing
                is changed: decrypt the column first).
        """
        operations.invoke(cls(table_name, column_name, schema=schema, type_=type_))

    def reverse(self) -> AlterColumnToEncryptedOp:
        """The type change to ``bytea``."""
        return AlterColumnToEncryptedOp(
            self.table_name, self.column_name, schema=self.schema, from_type=self.type_
        )


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _bytea_guard(operations: Operations, op: AlterColumnToEncryptedOp) -> str:
    """A ``DO`` block that fails when the column is ``bytea`` already (for offline scripts).

    Offline the catalog cannot be read before the script is written, so the script checks
    when it runs: cast to text, a bytea value would be stored as its hex escape form.
    """
    table = _sql_literal(_quoted(operations, op.table_name, op.schema))
    column = _sql_literal(op.column_name)
    message = _sql_literal(
        f"column {op.column_name} is bytea already; the column job encrypts it as is"
    )
    return (
        "DO $glc$ BEGIN IF EXISTS (SELECT 1 FROM pg_attribute a "
        f"WHERE a.attrelid = to_regclass({table}) AND a.attname = {column} "
        "AND NOT a.attisdropped AND format_type(a.atttypid, a.atttypmod) = 'bytea') "
        f"THEN RAISE EXCEPTION {message}; END IF; END $glc$"
    )


@Operations.implementation_for(AlterColumnToEncryptedOp)
def _alter_to_encrypted(operations: Operations, op: AlterColumnToEncryptedOp) -> None:
    _postgresql(operations, "alter_column_to_encrypted")
    if operations.get_context().as_sql:
        operations.execute(_bytea_guard(operations, op))
    else:
        current = _column_type(operations, op.table_name, op.column_name, op.schema)
        if current == "bytea":
            raise InvalidArgumentError(
                f"column {op.column_name!r} is bytea already; the column job encrypts it as is"
            )
    col = _quoted(operations, op.column_name)
    operations.execute(
        f"ALTER TABLE {_quoted(operations, op.table_name, op.schema)} ALTER COLUMN {col} "
        f"TYPE bytea USING convert_to(CAST({col} AS text), 'UTF8')"
    )


@Operations.implementation_for(AlterColumnFromEncryptedOp)
def _alter_from_encrypted(operations: Operations, op: AlterColumnFromEncryptedOp) -> None:
    _postgresql(operations, "alter_column_from_encrypted")
    table = _quoted(operations, op.table_name, op.schema)
    col = _quoted(operations, op.column_name)
    if not operations.get_context().as_sql:
        envelopes = (
            operations.get_bind()
            .execute(
                text(
                    f"SELECT count(*) FROM {table} WHERE octet_length({col}) > 0 "
                    f"AND get_byte({col}, 0) = 250"
                )
            )
            .scalar()
        )
        if envelopes:
            raise InvalidArgumentError(
                f"{envelopes} value(s) of {op.table_name}.{op.column_name} are ciphertext; "
                "decrypt the column before turning it back into text"
            )
    target = op.type_ if op.type_ is not None else sa.Text()
    ddl = target.compile(dialect=operations.get_context().dialect)
    operations.execute(
        f"ALTER TABLE {table} ALTER COLUMN {col} TYPE {ddl} USING convert_from({col}, 'UTF8')"
    )


# -- the column jobs ---------------------------------------------------------------------


def _spec_of(target: Any, version_column: str | None) -> ColumnSpec:
    if isinstance(target, ColumnSpec):
        if version_column is not None:
            raise InvalidArgumentError("give version_column in the ColumnSpec")
        return target
    return ColumnSpec.from_model(target, version_column=version_column)


def _model_service(target: Any) -> Any:
    column = target.property.columns[0] if hasattr(target, "property") else target
    return column.type.service


class _ColumnJobOp(MigrateOperation):
    """A column job (see :class:`EncryptColumnOp` for the arguments)."""

    mode = "encrypt"

    def __init__(
        self,
        target: Any,
        *,
        service: Any = None,
        version_column: str | None = None,
        batch_size: int = 500,
        state_schema: str = "encryption",
        defer: bool = False,
    ) -> None:
        self.target = target
        self.service = service
        self.version_column = version_column
        self.batch_size = batch_size
        self.state_schema = state_schema
        self.defer = defer

    def spec(self) -> ColumnSpec:
        """The job's column spec (from the model, or the ColumnSpec given)."""
        return _spec_of(self.target, self.version_column)


@Operations.register_operation("encrypt_column")
class EncryptColumnOp(_ColumnJobOp):
    """``op.encrypt_column(User.email)``: encrypts every plaintext value of a column (phase 1).

    Args:
        target: The encrypted model attribute or Column (its type gives the context, binding
            and blind index), or a :class:`~greenlang_crypto.sqlalchemy.migrate.ColumnSpec`.
        service: The EncryptionService (or a callable returning one); default the one given
            to :func:`greenlang_crypto.alembic.configure`, else the column type's.
        version_column: Integer column mirroring each value's key version.
        batch_size: Rows per batch (one SAVEPOINT each).
        state_schema: Schema of the job and quarantine tables.
        defer: Do not run the job: print the ``greenlang-crypto`` command that runs it (the
            database URL comes from ``--url`` or ``$GLC_DATABASE_URL``) and return it.
    """

    mode = "encrypt"

    @classmethod
    def encrypt_column(
        cls,
        operations: Operations,
        target: Any,
        *,
        service: Any = None,
        version_column: str | None = None,
        batch_size: int = 500,
        state_schema: str = "encryption",
        defer: bool = False,
    ) -> JobReport | str:
        """Runs the encryption job on the migration's connection (or defers it to the CLI).

        Returns:
            The job's report; with ``defer=True`` the CLI command.

        Raises:
            ColumnJobFailedError: Rows were quarantined or remain (the migration rolls back).
            InvalidArgumentError: Not PostgreSQL; an offline migration without ``defer``;
                ``defer`` for a column the CLI's flags cannot describe.
        """
        op = cls(
            target,
            service=service,
            version_column=version_column,
            batch_size=batch_size,
            state_schema=state_schema,
            defer=defer,
        )
        return cast("JobReport | str", operations.invoke(op))


@Operations.register_operation("reencrypt_column")
class ReencryptColumnOp(_ColumnJobOp):
    """``op.reencrypt_column(User.email)``: moves a column to the primary key version.

    Also recomputes blind indexes made with an older index key version. Arguments as
    :class:`EncryptColumnOp`.
    """

    mode = "reencrypt"

    @classmethod
    def reencrypt_column(
        cls,
        operations: Operations,
        target: Any,
        *,
        service: Any = None,
        version_column: str | None = None,
        batch_size: int = 500,
        state_schema: str = "encryption",
        defer: bool = False,
    ) -> JobReport | str:
        """Runs the re-encryption job on the migration's connection (or defers it).

        Returns:
            The job's report; with ``defer=True`` the CLI command.

        Raises:
            ColumnJobFailedError: Rows were quarantined or remain (the migration rolls back).
            InvalidArgumentError: As :meth:`EncryptColumnOp.encrypt_column`.
        """
        op = cls(
            target,
            service=service,
            version_column=version_column,
            batch_size=batch_size,
            state_schema=state_schema,
            defer=defer,
        )
        return cast("JobReport | str", operations.invoke(op))


# The CLI's --index-normalizer choices, by the normalizer chain each stands for.
def _normalizer_flag(steps: tuple[Any, ...]) -> str | None:
    from greenlang_crypto.sqlalchemy import blind_index as bi

    choices: dict[tuple[Any, ...], str] = {
        (): "none",
        tuple(bi.EMAIL): "email",
        tuple(bi.PHONE): "phone",
        (bi.casefold,): "casefold",
        (bi.nfc,): "nfc",
        (bi.strip,): "strip",
    }
    return choices.get(tuple(steps))


def _spec_flags(spec: ColumnSpec) -> list[str]:
    argv = [
        "--table",
        spec.table,
        "--column",
        spec.column,
        "--pk",
        spec.pk,
        "--data-class",
        spec.data_class,
    ]
    if spec.tenant_column is not None:
        argv += ["--tenant-column", spec.tenant_column]
    else:
        argv += ["--tenant", str(spec.tenant_id)]
    if spec.bind_row:
        argv.append("--bind-row")
    if spec.kind != "str":
        argv += ["--kind", spec.kind]
    if spec.version_column:
        argv += ["--version-column", spec.version_column]
    if spec.index_column:
        flag = _normalizer_flag(spec.index_normalizer)
        if flag is None:
            raise InvalidArgumentError(
                "the blind index of this column has a normalizer the CLI cannot name; pass "
                "the model attribute (op.encrypt_column(User.email, defer=True)) or run the "
                "job in the migration"
            )
        argv += ["--index-column", spec.index_column, "--index-normalizer", flag]
        if spec.index_purpose and spec.index_purpose != f"{spec.table}.{spec.column}":
            argv += ["--index-purpose", spec.index_purpose]
        argv += ["--index-length", str(spec.index_length)]
        if spec.index_per_tenant:
            argv.append("--index-per-tenant")
    return argv


def model_path(target: Any) -> str | None:
    """``package.module:Class.attribute`` of a mapped attribute (the CLI's ``--model``).

    None for anything the CLI cannot import: a Column or ColumnSpec, or a class defined in
    ``__main__`` or inside a function.
    """
    owner = getattr(target, "class_", None)
    key = getattr(target, "key", None)
    if owner is None or not isinstance(key, str):
        return None
    module, qualname = owner.__module__, owner.__qualname__
    if module == "__main__" or "<locals>" in qualname:
        return None
    return f"{module}:{qualname}.{key}"


def cli_command(
    mode: str,
    spec: ColumnSpec,
    *,
    model: str | None = None,
    batch_size: int = 500,
    state_schema: str = "encryption",
) -> str:
    """The ``greenlang-crypto`` command that runs the job of ``spec`` (shell-quoted).

    With ``model`` (``package.module:Class.attribute``) the command names the model
    (``--model``: the CLI reads every setting from it and checks a sample first); otherwise it
    spells the spec out as flags. Either way the CLI derives the same job name from the same
    column, so it joins (resumes) the run an earlier attempt left unfinished. The database URL
    is not part of the command (it may hold a password): the CLI takes it from ``--url`` or
    ``$GLC_DATABASE_URL``.

    Raises:
        InvalidArgumentError: Without ``model``, the column's blind-index normalizer has no
            CLI flag.
    """
    argv = ["greenlang-crypto", "db", "encrypt-column" if mode == "encrypt" else "reencrypt"]
    if model is not None:
        argv += ["--model", model]
        if spec.version_column:
            argv += ["--version-column", spec.version_column]
    else:
        argv += _spec_flags(spec)
    argv += ["--batch-size", str(batch_size), "--state-schema", state_schema]
    if mode == "encrypt":
        argv += ["--phase", "1"]
    return shlex.join(argv)


def _job_service(operations: Operations, op: _ColumnJobOp) -> EncryptionService:
    ref = op.service
    if ref is None:
        ref = operations.get_context().opts.get(SERVICE_OPTION)
    if ref is None:
        if isinstance(op.target, ColumnSpec):
            raise InvalidArgumentError(
                "a ColumnSpec carries no service: pass service= or configure(service=...)"
            )
        ref = _model_service(op.target)
    return cast("EncryptionService", resolve_service(ref))


def _failure(report: JobReport) -> ColumnJobFailedError:
    shown = ", ".join(f"{pk} ({reason})" for pk, reason, _ in report.quarantined[:20])
    more = len(report.quarantined) - 20
    return ColumnJobFailedError(
        f"job {report.job}: {len(report.quarantined)} row(s) quarantined"
        + (f": {shown}" if shown else "")
        + (f" and {more} more" if more > 0 else "")
        + f"; {report.remaining} row(s) remain; the migration is rolled back"
    )


def _run_job(operations: Operations, op: _ColumnJobOp) -> JobReport | str:
    _postgresql(operations, f"{op.mode}_column")
    spec = op.spec()
    context: MigrationContext = operations.get_context()
    if op.defer:
        command = cli_command(
            op.mode,
            spec,
            model=model_path(op.target),
            batch_size=op.batch_size,
            state_schema=op.state_schema,
        )
        _log.warning(
            "%s of %s.%s deferred to the CLI: %s", op.mode, spec.table, spec.column, command
        )
        if context.as_sql:
            # Offline, stdout is usually the SQL script being written: the note goes into
            # it as comments, and printing it there would break the script.
            note = f"deferred {op.mode} of {spec.table}.{spec.column}; run: {command}"
            context.impl.static_output("-- " + " ".join(note.splitlines()))
        else:
            print(f"  deferred {op.mode} of {spec.table}.{spec.column}; run:\n  {command}")
        return command
    if context.as_sql:
        raise InvalidArgumentError(
            f"{op.mode}_column reads and writes rows: it needs an online migration "
            "(or defer=True, which prints the CLI command)"
        )
    job = ColumnJob(
        operations.get_bind(),
        _job_service(operations, op),
        spec,
        mode=op.mode,
        batch_size=op.batch_size,
        state_schema=op.state_schema,
    )
    report = job.run()
    _log.info("%s of %s.%s: %s", op.mode, spec.table, spec.column, report.summary())
    if not report.ok:
        raise _failure(report)
    return report


Operations.implementation_for(EncryptColumnOp)(_run_job)
Operations.implementation_for(ReencryptColumnOp)(_run_job)


# -- phase 2 -----------------------------------------------------------------------------


@Operations.register_operation("forbid_plaintext")
class ForbidPlaintextOp(MigrateOperation):
    """``op.forbid_plaintext(User.email)``: phase 2 of a plaintext migration.

    Args:
        target: The encrypted model attribute or Column, or a ColumnSpec.
        name: The constraint name (default ``glc_<column>_is_envelope``).
    """

    def __init__(self, target: Any, *, name: str | None = None) -> None:
        self.target = target
        self.name = name

    @classmethod
    def forbid_plaintext(
        cls, operations: Operations, target: Any, *, name: str | None = None
    ) -> None:
        """Fails if any value is plaintext; then adds the named CHECK constraint.

        A model declares the same constraint with
        :func:`~greenlang_crypto.sqlalchemy.migrate.ciphertext_check` (same name and
        condition), so the model and the database agree.

        Raises:
            PlaintextFoundError: Some rows hold plaintext (nothing is changed).
            InvalidArgumentError: Not PostgreSQL.
        """
        operations.invoke(cls(target, name=name))

    def reverse(self) -> AllowPlaintextOp:
        """Drops the constraint."""
        spec = _spec_of(self.target, None)
        schema, _, table = spec.table.rpartition(".")
        return AllowPlaintextOp(table, spec.column, schema=schema or None, name=self.name)


@Operations.register_operation("allow_plaintext")
class AllowPlaintextOp(MigrateOperation):
    """``op.allow_plaintext(table, column)``: drops the phase-2 CHECK constraint (if any).

    Args:
        table_name: The table.
        column_name: The encrypted column.
        schema: The table's schema.
        name: The constraint name (default ``glc_<column>_is_envelope``).
    """

    def __init__(
        self,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        name: str | None = None,
    ) -> None:
        self.table_name = table_name
        self.column_name = column_name
        self.schema = schema
        self.name = name

    @classmethod
    def allow_plaintext(
        cls,
        operations: Operations,
        table_name: str,
        column_name: str,
        *,
        schema: str | None = None,
        name: str | None = None,
    ) -> None:
        """Drops the phase-2 CHECK constraint of the column, if it exists."""
        operations.invoke(cls(table_name, column_name, schema=schema, name=name))


@Operations.implementation_for(ForbidPlaintextOp)
def _forbid_plaintext(operations: Operations, op: ForbidPlaintextOp) -> None:
    _postgresql(operations, "forbid_plaintext")
    spec = _spec_of(op.target, None)
    name = op.name or ciphertext_check_name(spec.column)
    if operations.get_context().as_sql:
        from greenlang_crypto.sqlalchemy.migrate import ciphertext_check

        check = ciphertext_check(spec.column, name=name)
        # The spec names a table of another schema as ``schema.table``.
        schema, _, table = spec.table.rpartition(".")
        operations.execute(
            f"ALTER TABLE {_quoted(operations, table, schema or None)} ADD CONSTRAINT "
            f"{_quoted(operations, name)} CHECK ({check.sqltext})"
        )
        return
    enforce_ciphertext(operations.get_bind(), spec, name=name)


@Operations.implementation_for(AllowPlaintextOp)
def _allow_plaintext(operations: Operations, op: AllowPlaintextOp) -> None:
    _postgresql(operations, "allow_plaintext")
    name = op.name or ciphertext_check_name(op.column_name)
    operations.execute(
        f"ALTER TABLE {_quoted(operations, op.table_name, op.schema)} "
        f"DROP CONSTRAINT IF EXISTS {_quoted(operations, name)}"
    )


# -- autogenerate ------------------------------------------------------------------------


def _is_encrypted(type_: Any) -> bool:
    from greenlang_crypto.sqlalchemy.types import EncryptedType

    return isinstance(type_, EncryptedType)


def _is_bytes(type_: Any) -> bool:
    return isinstance(type_, sa.LargeBinary) and not isinstance(type_, sa.types.TypeDecorator)


#: Rewrites autogenerate's type change of a text column to an encrypted type (a plain
#: ``ALTER ... TYPE bytea`` has no cast from text and fails) into
#: ``op.alter_column_to_encrypted``, and the downgrade's change back into
#: ``op.alter_column_from_encrypted``. :func:`greenlang_crypto.alembic.configure` installs it
#: as ``process_revision_directives``.
encrypted_type_changes = Rewriter()


@encrypted_type_changes.rewrites(alembic_ops.AlterColumnOp)
def _rewrite_type_change(
    context: Any, revision: Any, op: alembic_ops.AlterColumnOp
) -> list[MigrateOperation] | alembic_ops.AlterColumnOp:
    new, old = op.modify_type, op.existing_type
    if new is None or old is None:
        return op
    if _is_encrypted(new) and not _is_encrypted(old) and not _is_bytes(old):
        change: MigrateOperation = AlterColumnToEncryptedOp(
            op.table_name, op.column_name, schema=op.schema, from_type=old
        )
    elif _is_encrypted(old) and not _is_encrypted(new) and not _is_bytes(new):
        change = AlterColumnFromEncryptedOp(
            op.table_name, op.column_name, schema=op.schema, type_=new
        )
    else:
        return op
    op.modify_type = None
    return [change, op] if op.has_changes() else [change]


def _args(autogen_context: AutogenContext, op: Any, type_: Any, type_kw: str) -> str:
    args = [repr(op.table_name), repr(op.column_name)]
    if op.schema:
        args.append(f"schema={op.schema!r}")
    if type_ is not None:
        args.append(f"{type_kw}={_repr_type(type_, autogen_context)}")
    return ", ".join(args)


@renderers.dispatch_for(AlterColumnToEncryptedOp)
def _render_to_encrypted(autogen_context: AutogenContext, op: AlterColumnToEncryptedOp) -> str:
    prefix = autogen_context.opts.get("alembic_module_prefix", "op.")
    args = _args(autogen_context, op, op.from_type, "from_type")
    return f"{prefix}alter_column_to_encrypted({args})"


@renderers.dispatch_for(AlterColumnFromEncryptedOp)
def _render_from_encrypted(autogen_context: AutogenContext, op: AlterColumnFromEncryptedOp) -> str:
    prefix = autogen_context.opts.get("alembic_module_prefix", "op.")
    args = _args(autogen_context, op, op.type_, "type_")
    return f"{prefix}alter_column_from_encrypted({args})"
