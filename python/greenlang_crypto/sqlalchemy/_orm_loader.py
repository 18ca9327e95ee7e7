"""Loads the ORM hooks (:mod:`.orm`) before SQLAlchemy configures any mapper.

Row binding and blind-index filling need the hooks in place before a mapper using the column
types is configured, also when a model imports the types straight from :mod:`.types` or
:mod:`.blind_index` rather than through the package's lazy exports. The hooks sit above those
modules (they read the column types), so those modules cannot import them without an import
cycle; they import this module instead.

The hooks are loaded on SQLAlchemy's ``before_configured`` event. Mappers are configured before
any object of theirs is created, flushed or loaded, and that event comes first, ahead of the
per-mapper events the hooks listen to, so the hooks see every mapper as an eager import would
have let them. The module is named rather than imported here for the same reason as above.
"""

from __future__ import annotations

import importlib

from sqlalchemy import event
from sqlalchemy.orm import Mapper

__all__: list[str] = []

_HOOKS = __name__.rpartition(".")[0] + ".orm"


@event.listens_for(Mapper, "before_configured")
def _load_hooks() -> None:
    # Repeated on every configuration run: after the first, the import is a dictionary lookup.
    importlib.import_module(_HOOKS)


def watch_sessions() -> None:
    """Installs the hooks' Session listener now (for the first row-bound column type).

    SQLAlchemy configures mappers lazily, inside the first query that needs them, which is
    too late for a Session listener installed at configuration to see that query.
    """
    importlib.import_module(_HOOKS).watch_sessions()
