"""An application's model module, written to disk so that ``--model`` can import it by name.

The tests of the model-driven column jobs and of the purge import it in process (and set its
``SERVICE``), and the CLI imports it from ``PYTHONPATH`` or the working directory.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.conftest import pg_private_database

_SOURCE = '''
from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from greenlang_crypto.sqlalchemy import EMAIL, BlindIndex, EncryptedString, FromRow

SERVICE: Any = None


def service() -> Any:
    return SERVICE


class Base(DeclarativeBase):
    pass


class Doc(Base):
    """The README's case: the tenant comes from the row, so values are bound to the row."""

    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    tenant_id: Mapped[str] = mapped_column(String(40))
    email: Mapped[str | None] = mapped_column(
        EncryptedString(
            service, data_class="pii", tenant_id=FromRow("tenant_id"), allow_plaintext=True
        ),
        nullable=True,
    )
    email_bidx: Mapped[bytes | None] = mapped_column(
        BlindIndex("email", normalizer=EMAIL, per_tenant=True), nullable=True
    )
    email_kv: Mapped[int | None] = mapped_column(Integer, nullable=True)


class PrefixedId(TypeDecorator[str]):
    """A bigint key the application sees as "n<number>"."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else int(str(value).removeprefix("n"))

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else f"n{value}"


class Note(Base):
    """Row-bound with a primary key the model renders differently from the database."""

    __tablename__ = "notes"
    id: Mapped[str] = mapped_column(PrefixedId, primary_key=True, autoincrement=False)
    body: Mapped[str | None] = mapped_column(
        EncryptedString(
            service, data_class="pii", tenant_id="acme", bind_row=True, allow_plaintext=True
        ),
        nullable=True,
    )
'''


def write_model_module(directory: Path) -> str:
    """Writes the model module into ``directory``; returns its (unique) module name."""
    name = f"glc_app_models_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(_SOURCE)
    return name


@contextmanager
def model_module(directory: Path, service: Any) -> Iterator[ModuleType]:
    """The model module imported from ``directory``, its ``SERVICE`` set; removed after."""
    name = write_model_module(directory)
    sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(name)
        setattr(module, "SERVICE", service)  # noqa: B010 - the module is built at run time
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(directory))


@contextmanager
def private_engine(prefix: str) -> Iterator[tuple[str, Engine]]:
    """A database of the test's own (dropped after) and an engine on it."""
    with pg_private_database(prefix, sqlalchemy_url=True) as url:
        engine = create_engine(url)
        try:
            yield url, engine
        finally:
            engine.dispose()


def fill_docs(engine: Engine, rows: Sequence[tuple[int, str, str | None]]) -> None:
    """Inserts plaintext rows (UTF-8 bytes, as the application wrote them before)."""
    with engine.begin() as conn:
        for pk, tenant, email in rows:
            conn.execute(
                text(
                    "INSERT INTO docs (id, tenant_id, email) VALUES "
                    "(:i, :t, convert_to(CAST(:e AS text), 'UTF8'))"
                ),
                {"i": pk, "t": tenant, "e": email},
            )


def raw_rows(engine: Engine, table: str = "docs") -> list[tuple[Any, ...]]:
    """Every row of ``table`` as stored, in pk order."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]
