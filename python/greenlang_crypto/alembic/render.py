"""Autogenerate rendering of the library's column types (Alembic's ``render_item`` hook).

Without the hook Alembic writes a library type as ``<module>.<Class>()``: no import, and no
arguments (a TypeDecorator's ``repr`` shows its impl's arguments), so the revision fails with
``NameError`` and then ``TypeError`` (``BlindIndex`` needs its ``source``). :func:`render_item`
writes each type with its import and the constructor arguments that rebuild it:

* encrypted types (``EncryptedString``, ``EncryptedText``, ``EncryptedBytes``,
  ``EncryptedJSON``): ``data_class``, ``tenant_id`` and the non-default ``bind_row``,
  ``location``, ``allow_plaintext``, ``skip_erased``;
* ``BlindIndex``: ``source``, ``length`` and the non-default ``purpose``, ``per_tenant``,
  ``orm_deferred``, and ``normalizer`` when it is made of the built-in normalizers;
* ``PgcryptoString``: ``key_version`` and the non-default ``location``, ``allow_logged_key``.

A migration only needs the DDL (``bytea``), so the rendered type has no service
(``None``: encrypting or decrypting through it raises ``InvalidArgumentError``), and a tenant
given as a callable is rendered as :func:`ddl_only_tenant`, which raises when called. A
subclass of a library type defined by the application renders as the library type it derives
from: the migration then does not import application code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from greenlang_crypto.exceptions import InvalidArgumentError

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext

__all__ = ["ddl_only_tenant", "render_item", "render_type"]

_TYPES = "greenlang_crypto.sqlalchemy.types"
_BLIND = "greenlang_crypto.sqlalchemy.blind_index"
_PGCRYPTO = "greenlang_crypto.sqlalchemy.pgcrypto"
_PACKAGE = "greenlang_crypto.sqlalchemy"
_HERE = "greenlang_crypto.alembic"

# The column types a migration may name, by the module that defines them. Anything else in
# these modules (the lookup parameter type of blind indexes) is not a column type.
_RENDERABLE = {
    _TYPES: ("EncryptedString", "EncryptedText", "EncryptedBytes", "EncryptedJSON"),
    _BLIND: ("BlindIndex",),
    _PGCRYPTO: ("PgcryptoString",),
}


def ddl_only_tenant() -> str:
    """The tenant of an encrypted type rendered into a migration (DDL only).

    The application's tenant callable (a ``ContextVar`` reader, say) is not importable from a
    migration, and a migration needs only the column's DDL.

    Raises:
        InvalidArgumentError: Always: a migration's copy of a type must not encrypt or decrypt.
    """
    raise InvalidArgumentError(
        "this encrypted type was rendered for a migration (DDL only); use the model's type "
        "to encrypt or decrypt"
    )


def _library_class(type_: Any) -> tuple[str, str] | None:
    """``(module, class name)`` of the library type ``type_`` is (or derives from)."""
    for cls in type(type_).__mro__:
        if cls.__name__ in _RENDERABLE.get(cls.__module__, ()):
            return cls.__module__, cls.__name__
    return None


def _normalizer_expr(steps: tuple[Callable[[str], str], ...]) -> str | None:
    """The expression of a built-in normalizer chain, or None for any other."""
    from greenlang_crypto.sqlalchemy import blind_index

    for name in ("EMAIL", "PHONE"):
        if steps == getattr(blind_index, name):
            return f"{_BLIND}.{name}"
    names = []
    for step in steps:
        name = getattr(step, "__name__", "")
        if getattr(blind_index, name, None) is not step or name.startswith("_"):
            return None
        names.append(f"{_BLIND}.{name}")
    return "(" + ", ".join(names) + ("," if len(names) == 1 else "") + ")"


def _tenant_expr(tenant: Any, imports: set[str]) -> str:
    from greenlang_crypto.sqlalchemy._common import FromRow

    if isinstance(tenant, str):
        return repr(tenant)
    if isinstance(tenant, FromRow):
        imports.add(f"import {_PACKAGE}")
        return f"{_PACKAGE}.FromRow({tenant.attribute!r})"
    imports.add(f"import {_HERE}")
    return f"{_HERE}.ddl_only_tenant"


def render_type(type_: Any, imports: set[str]) -> str | None:
    """Python source that rebuilds the library type ``type_`` (None for any other type).

    Args:
        type_: A column type.
        imports: The import lines the source needs are added here.
    """
    found = _library_class(type_)
    if found is None:
        return None
    module, name = found
    imports.add(f"import {module}")
    args: list[str] = []
    if module == _TYPES:
        args += [
            "None",
            f"data_class={type_.data_class!r}",
            f"tenant_id={_tenant_expr(type_.tenant_id, imports)}",
        ]
        # bind_row is implied by a row tenant; repeating it keeps the rendering literal.
        if type_.bind_row:
            args.append("bind_row=True")
        if type_.location is not None:
            args.append(f"location={type_.location!r}")
        if type_.allow_plaintext:
            args.append("allow_plaintext=True")
        if getattr(type_, "skip_erased", False):
            args.append("skip_erased=True")
    elif module == _BLIND:
        args.append(f"source={type_.source!r}")
        if type_.purpose is not None:
            args.append(f"purpose={type_.purpose!r}")
        if type_.normalizer:
            expr = _normalizer_expr(type_.normalizer)
            if expr is not None:
                args.append(f"normalizer={expr}")
        args.append(f"length={int(type_.length)}")
        if type_.per_tenant:
            args.append("per_tenant=True")
        if not type_.orm_deferred:
            args.append("orm_deferred=False")
    else:
        args += ["None", f"key_version={int(type_.key_version)}"]
        if type_.location is not None:
            args.append(f"location={type_.location!r}")
        if type_.allow_logged_key:
            args.append("allow_logged_key=True")
    return f"{module}.{name}({', '.join(args)})"


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Alembic's ``render_item`` hook for the library's column types.

    Pass it as ``context.configure(render_item=render_item)`` in ``env.py`` (or use
    :func:`greenlang_crypto.alembic.configure`). Returns ``False`` for everything else, so
    Alembic renders that itself.

    Args:
        type_: What Alembic renders (``"type"``, ``"column"``, ...).
        obj: The object.
        autogen_context: Alembic's context; the imports the rendering needs go to its
            ``imports`` (the ``${imports}`` of ``script.py.mako``).
    """
    if type_ != "type":
        return False
    rendered = render_type(obj, autogen_context.imports)
    return False if rendered is None else rendered
