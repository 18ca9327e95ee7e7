"""The registry of encrypted columns: what the rotation autopilot re-encrypts and counts.

Built from the models (every column whose type is one of the library's encrypted types, with
its blind index), so no column is re-encrypted with settings that differ from its model; a
column added by hand goes through the same :meth:`ColumnSpec.from_model` (or is a spec
written out, checked against its ``model`` when it names one).

An encrypted column that a column job cannot take (its type binds values to another
location, its tenant is a callable, its table has no single-column primary key) is kept as
*unsupported* with the reason: data under an old key version may remain there, so the
autopilot never retires a version while the registry has one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.orm import registry as orm_registry

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.sqlalchemy._job_spec import ColumnSpec
from greenlang_crypto.sqlalchemy.types import EncryptedType

__all__ = ["ColumnRegistry"]


def _name(spec: ColumnSpec) -> str:
    return f"{spec.table}.{spec.column}"


class ColumnRegistry:
    """The encrypted columns one autopilot walks, each as a :class:`ColumnSpec`.

    Example::

        registry = ColumnRegistry.from_metadata(Base)  # every encrypted column of the models
        registry.add(Legacy.notes, version_column="notes_key_version")

    Attributes:
        unsupported: ``{"table.column": reason}`` of encrypted columns found in the models
            that a column job cannot re-encrypt (see the module docstring).
    """

    def __init__(self) -> None:
        self._specs: dict[str, ColumnSpec] = {}
        self.unsupported: dict[str, str] = {}

    @classmethod
    def from_metadata(
        cls, source: Any, *, version_columns: Mapping[str, str] | None = None
    ) -> ColumnRegistry:
        """Every encrypted column of a declarative base, an ORM ``registry`` or a ``MetaData``.

        Mapped classes are read through their mapper (so a ``FromRow`` tenant names the
        attribute's column); tables of a ``MetaData`` that no mapper covers are read column
        by column.

        Args:
            source: A declarative base class (``Base``), a ``sqlalchemy.orm.registry`` or a
                ``MetaData``.
            version_columns: ``{"table.column": version column}`` for columns that mirror
                their key version in an integer column (the model does not say which).

        Raises:
            InvalidArgumentError: ``source`` is none of those, or ``version_columns`` names a
                column that is not encrypted.
        """
        mappers: list[Any] = []
        if isinstance(source, MetaData):
            metadata = source
        elif isinstance(source, orm_registry):
            metadata, mappers = source.metadata, list(source.mappers)
        elif isinstance(getattr(source, "registry", None), orm_registry):
            metadata, mappers = source.registry.metadata, list(source.registry.mappers)
        else:
            raise InvalidArgumentError(
                "from_metadata takes a declarative base, an ORM registry or a MetaData"
            )
        versions = dict(version_columns or {})
        out = cls()
        for mapper in sorted(mappers, key=lambda m: m.class_.__qualname__):
            for prop in mapper.column_attrs:
                column = prop.columns[0]
                if isinstance(column.type, EncryptedType) and column.table is not None:
                    out._found(getattr(mapper.class_, prop.key), column, versions)
        for table in metadata.sorted_tables:
            for column in table.columns:
                if isinstance(column.type, EncryptedType):
                    out._found(column, column, versions)
        unknown = set(versions) - set(out._specs) - set(out.unsupported)
        if unknown:
            raise InvalidArgumentError(
                f"version_columns names columns that are not encrypted: {sorted(unknown)}"
            )
        return out

    def _found(self, source: Any, column: Any, versions: Mapping[str, str]) -> None:
        """Registers a column found in the models (the first finding of a column wins)."""
        name = f"{column.table.fullname}.{column.name}"
        if name in self._specs or name in self.unsupported:
            return  # a subclass of single-table inheritance maps its parent's columns again
        try:
            spec = ColumnSpec.from_model(source, version_column=versions.get(name))
        except InvalidArgumentError as exc:
            self.unsupported[name] = str(exc)
            return
        self._specs[_name(spec)] = spec

    def add(self, column: Any, *, version_column: str | None = None) -> ColumnSpec:
        """Registers one column: a model attribute (``User.email``), a ``Column``, or a spec.

        A model column's spec comes from :meth:`ColumnSpec.from_model`. A
        :class:`ColumnSpec` is taken as it is (its job checks it against its ``model`` when
        it has one). Registering the same column again with the same settings changes nothing.

        Returns:
            The registered spec.

        Raises:
            InvalidArgumentError: The column is not encrypted or a job cannot take it, or it
                is registered already with other settings.
        """
        if isinstance(column, ColumnSpec):
            if version_column is not None:
                raise InvalidArgumentError("a ColumnSpec carries its own version_column")
            spec = column
        else:
            spec = ColumnSpec.from_model(column, version_column=version_column)
        name = _name(spec)
        known = self._specs.get(name)
        if known is not None and (known != spec or known.version_column != spec.version_column):
            raise InvalidArgumentError(f"{name} is registered already with other settings")
        self._specs[name] = spec
        self.unsupported.pop(name, None)
        return spec

    def get(self, name: str) -> ColumnSpec | None:
        """The spec of ``table.column``, or ``None``."""
        return self._specs.get(name)

    @property
    def specs(self) -> tuple[ColumnSpec, ...]:
        """The registered specs, in the order they were registered."""
        return tuple(self._specs.values())

    def names(self) -> list[str]:
        """``table.column`` of every registered column, in registration order."""
        return list(self._specs)

    def __iter__(self) -> Iterator[ColumnSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"ColumnRegistry({self.names()!r}, unsupported={sorted(self.unsupported)!r})"
