"""Alembic autogenerate filters that hide the library's own schema from a project's migrations.

``greenlang-crypto db migrate`` (and the key store, audit sinks and column jobs at run time)
create tables only in the schema ``encryption``. A project whose Alembic environment compares
every schema (``include_schemas=True``), or whose database still holds ``glc_*`` objects an
earlier release left in ``public``, would otherwise see them in ``alembic check`` and
``alembic revision --autogenerate`` as tables to drop. Pass these filters to
``context.configure`` in the project's ``env.py``::

    from greenlang_crypto.alembic import include_name, include_object

    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_schemas=True,          # optional; the filters work either way
        include_name=include_name,     # skips reflecting the library's schema at all
        include_object=include_object,
    )

To combine them with a filter of the project's own::

    def my_include_object(obj, name, type_, reflected, compare_to):
        return include_object(obj, name, type_, reflected, compare_to) and name != "tmp"

A key store, audit log or job state placed in another schema (``schema=``, ``state_schema=``)
is hidden by a filter of its own: ``LibraryObjectFilter(("encryption", "keys"))``.

The columns the library's example adds to application tables (``<col>_enc``,
``<col>_key_version``, ``<col>_bidx``; ``db migrate --example-columns``) are application data
and are *not* hidden: model them. Their indexes are named ``glc_<table>_<col>_bidx``; a model
index of that name is compared as usual, a reflected one the model lacks is hidden.

This module imports neither Alembic nor SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.sql import LIBRARY_SCHEMA

__all__ = ["LibraryObjectFilter", "include_name", "include_object"]

#: The prefix of every table and index name the library creates.
_PREFIX = "glc_"
#: Object kinds Alembic passes whose schema is their table's.
_TABLE_PARTS = frozenset({"column", "index", "unique_constraint", "foreign_key_constraint"})


class LibraryObjectFilter:
    """Alembic ``include_object`` / ``include_name`` callables excluding the library's objects.

    Excluded:

    * every object in one of ``schemas`` (default ``("encryption",)``): the library's tables,
      their columns, indexes and constraints, and the migration ledger;
    * any table, index or constraint named ``glc_*`` that exists in the database but not in
      the project's metadata (``reflected`` with no ``compare_to``): what an earlier release
      created outside its schema, such as ``public.glc_schema_migrations`` or an index its
      migration added to an application table.

    Everything else, including any ``glc_*`` object the project's own metadata declares, is
    left to Alembic.
    """

    def __init__(self, schemas: Iterable[str] = (LIBRARY_SCHEMA,)) -> None:
        """Hides ``schemas`` (names as PostgreSQL stores them).

        Raises:
            InvalidArgumentError: ``schemas`` is empty, or holds something that is not a
                non-empty str (a ``ValueError``).
        """
        names = tuple(schemas)
        if not names or not all(isinstance(s, str) and s for s in names):
            raise InvalidArgumentError("schemas must be one or more schema names")
        self.schemas = frozenset(names)

    def __repr__(self) -> str:
        """``LibraryObjectFilter(('encryption',))``."""
        return f"{type(self).__name__}({tuple(sorted(self.schemas))!r})"

    def include_object(
        self, obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        """Alembic's ``include_object`` hook: False for the library's objects.

        Args:
            obj: The SQLAlchemy schema item (``Table``, ``Column``, ``Index``, a constraint).
            name: Its name (may be None for an unnamed constraint).
            type_: ``"table"``, ``"column"``, ``"index"``, ``"unique_constraint"`` or
                ``"foreign_key_constraint"``.
            reflected: Whether ``obj`` was read from the database.
            compare_to: The counterpart on the other side (metadata or database), or None.

        Returns:
            True to let Alembic compare the object, False to ignore it. Never raises for an
            object kind it does not know (it is included).
        """
        if self._schema_of(obj, type_) in self.schemas:
            return False
        if not (name and name.startswith(_PREFIX)) or type_ == "column":
            return True
        return not (reflected and compare_to is None)

    def include_name(self, name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
        """Alembic's ``include_name`` hook: skips reflecting the library's schemas.

        Args:
            name: The schema or object name (None for the default schema).
            type_: ``"schema"``, ``"table"``, ``"column"``, ``"index"``, ...
            parent_names: Alembic's names of the enclosing objects (``schema_name``, ...).

        Returns:
            False for the library's schemas and the objects in them; True otherwise (legacy
            ``glc_*`` objects elsewhere are left to :meth:`include_object`, which can tell
            whether the project's metadata declares them).
        """
        if type_ == "schema":
            return name not in self.schemas
        return parent_names.get("schema_name") not in self.schemas

    @staticmethod
    def _schema_of(obj: Any, type_: str) -> str | None:
        if type_ == "table":
            return getattr(obj, "schema", None)
        if type_ in _TABLE_PARTS:
            table = getattr(obj, "table", None)
            return getattr(table, "schema", None)
        return None


_DEFAULT = LibraryObjectFilter()


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic ``include_object`` hook hiding the library's schema ``encryption``.

    See :class:`LibraryObjectFilter` for what is excluded, and the module docstring for an
    ``env.py`` example. Never raises.
    """
    return _DEFAULT.include_object(obj, name, type_, reflected, compare_to)


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """Alembic ``include_name`` hook: does not reflect the schema ``encryption`` at all.

    Useful with ``include_schemas=True``; see :meth:`LibraryObjectFilter.include_name`.
    Never raises.
    """
    return _DEFAULT.include_name(name, type_, parent_names)
