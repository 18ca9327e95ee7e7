"""How an encrypted column finds the blind index declared beside it.

``encrypted_col == value`` is answered by the blind-index column over ``encrypted_col``, so the
column types need to find that column and ask its type for a predicate. The blind indexes in
turn read their source column's encrypted type. To keep that a one-way dependency (blind indexes
on top of the column types), the column types see an index only through :class:`IndexType`,
defined here below both; :class:`~.blind_index.BlindIndex` is its one implementation.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

__all__ = ["IndexType", "index_for_source"]


class IndexType(TypeDecorator[Any]):
    """What an encrypted column's ``==`` needs of the index column over it.

    Not a column type of its own (it has no ``impl``): the base of
    :class:`~.blind_index.BlindIndex`.

    Attributes:
        source: Name of the encrypted column in the same table.
    """

    source: str

    def where(
        self, column: ColumnElement[Any], value: Any, *, tenant_id: str | None = None
    ) -> ColumnElement[bool]:
        """The predicate on ``column`` (this index's column) matching the plaintext ``value``."""
        raise NotImplementedError


def index_for_source(expr: Any) -> Any:
    """The blind-index column declared over the encrypted column ``expr``, or ``None``."""
    table = getattr(expr, "table", None)
    name = getattr(expr, "name", None)
    if table is None or name is None:
        return None
    key = (table, name)
    found = _index_columns.get(key)
    if found is None:
        for col in table.c:
            if isinstance(col.type, IndexType) and col.type.source == name:
                if len(_index_columns) > 4096:
                    _index_columns.clear()
                found = _index_columns[key] = col
                break
    return found


# (table, encrypted column name) -> its blind-index column: every ``encrypted_col == value``
# looks it up. Only found columns are kept (a column added to a table later is still found).
_index_columns: dict[tuple[Any, str], Any] = {}
