"""Alembic integration: autogenerate that renders the library's types, and column operations.

In the project's ``env.py``::

    from greenlang_crypto.alembic import configure

    context.configure(
        **configure(
            {"connection": connection, "target_metadata": target_metadata},
            service=my_encryption_service,  # optional; default: each model column's service
        )
    )

:func:`configure` returns the options with

* ``render_item`` (:func:`~greenlang_crypto.alembic.render.render_item`): autogenerate writes
  ``EncryptedString``, ``EncryptedText``, ``EncryptedBytes``, ``EncryptedJSON``,
  ``BlindIndex`` and ``PgcryptoString`` with their imports and arguments;
* ``process_revision_directives``
  (:data:`~greenlang_crypto.alembic.operations.encrypted_type_changes`): a text column turning
  into an encrypted one is written as ``op.alter_column_to_encrypted`` (``USING convert_to``)
  instead of an ``ALTER ... TYPE bytea`` that has no cast;
* ``include_object`` / ``include_name`` (:mod:`._filter`): the library's own schema stays out
  of ``alembic check``;

each chained with a hook of that name already in the options (the project's runs after).
It also registers the operations of :mod:`.operations` on ``op``:
``op.alter_column_to_encrypted``, ``op.encrypt_column``, ``op.reencrypt_column``,
``op.forbid_plaintext`` and their reverses. A revision that encrypts ``users.email``::

    def upgrade():
        op.alter_column_to_encrypted("users", "email", from_type=sa.String(255))
        op.add_column("users", sa.Column("email_bidx", BlindIndex(source="email", ...)))
        op.create_index("ix_users_email_bidx", "users", ["email_bidx"])
        op.encrypt_column(User.email)      # the resumable job, in this migration's transaction
        op.forbid_plaintext(User.email)    # CHECK constraint glc_email_is_envelope

The model declares that constraint with
:func:`~greenlang_crypto.sqlalchemy.migrate.ciphertext_check` (``__table_args__``), so a
database built with ``metadata.create_all`` matches one built by the migrations. Alembic's
default transaction settings work (``transaction_per_migration`` is not needed): the job runs
on the migration's connection. For a table too large for one migration, use
``op.encrypt_column(User.email, defer=True)``: it prints the ``greenlang-crypto db
encrypt-column`` command (and returns it); run that, then ``op.forbid_plaintext`` in a later
revision. Keep the model's type at ``allow_plaintext=True`` until the job has finished.

Names resolve lazily: :mod:`._filter` imports neither Alembic nor SQLAlchemy, and importing
this package does not import them either until an Alembic name is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from greenlang_crypto.alembic._filter import LibraryObjectFilter, include_name, include_object

if TYPE_CHECKING:
    from greenlang_crypto.alembic.operations import (
        ColumnJobFailedError,
        cli_command,
        encrypted_type_changes,
    )
    from greenlang_crypto.alembic.render import ddl_only_tenant, render_item
    from greenlang_crypto.sqlalchemy.migrate import ciphertext_check, ciphertext_check_name

_LAZY = {
    "ColumnJobFailedError": "greenlang_crypto.alembic.operations",
    "cli_command": "greenlang_crypto.alembic.operations",
    "encrypted_type_changes": "greenlang_crypto.alembic.operations",
    "ddl_only_tenant": "greenlang_crypto.alembic.render",
    "render_item": "greenlang_crypto.alembic.render",
    "ciphertext_check": "greenlang_crypto.sqlalchemy.migrate",
    "ciphertext_check_name": "greenlang_crypto.sqlalchemy.migrate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def _chain_render(first: Any, then: Any) -> Any:
    """Render hook ``first``, then ``then`` for what ``first`` leaves (returns False for)."""
    if then is None or then is first:
        return first

    def both(type_: str, obj: Any, autogen_context: Any) -> Any:
        rendered = first(type_, obj, autogen_context)
        return rendered if rendered is not False else then(type_, obj, autogen_context)

    return both


def _chain_filter(first: Any, then: Any) -> Any:
    if then is None or then is first:
        return first

    def both(*args: Any) -> bool:
        return bool(first(*args) and then(*args))

    return both


def configure(
    context_kwargs: Mapping[str, Any] | None = None, *, service: Any = None
) -> dict[str, Any]:
    """The options of ``context.configure`` with the library's hooks added.

    Registers the library's Alembic operations (importing :mod:`.operations`).

    Args:
        context_kwargs: The project's own options (hooks in it are kept and chained: the
            library's ``render_item`` first, then the project's for what it leaves; both
            filters must include an object).
        service: The EncryptionService (or a callable returning one) that ``op.encrypt_column``
            and ``op.reencrypt_column`` use when not given one (default: the service of each
            model column's type).

    Returns:
        A new dict to pass as ``context.configure(**options)``.
    """
    from greenlang_crypto.alembic import operations
    from greenlang_crypto.alembic.render import render_item

    options = dict(context_kwargs or {})
    options["render_item"] = _chain_render(render_item, options.get("render_item"))
    theirs = options.get("process_revision_directives")
    options["process_revision_directives"] = (
        operations.encrypted_type_changes
        if theirs is None
        else operations.encrypted_type_changes.chain(theirs)
    )
    options["include_object"] = _chain_filter(include_object, options.get("include_object"))
    options["include_name"] = _chain_filter(include_name, options.get("include_name"))
    if service is not None:
        options[operations.SERVICE_OPTION] = service
    return options


__all__ = [
    "ColumnJobFailedError",
    "LibraryObjectFilter",
    "ciphertext_check",
    "ciphertext_check_name",
    "cli_command",
    "configure",
    "ddl_only_tenant",
    "encrypted_type_changes",
    "include_name",
    "include_object",
    "render_item",
]
