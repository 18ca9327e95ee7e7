"""The ORM-hook loader, in process: it names the hooks module and loads it on configuration.

Whether a fresh interpreter gets the hooks however the column types were imported is checked
in subprocesses by tests/integration/sqlalchemy/test_orm_loader.py.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, configure_mappers, mapped_column

from greenlang_crypto.sqlalchemy import _orm_loader


def test_it_names_the_hooks_module_of_its_own_package() -> None:
    assert _orm_loader._HOOKS == "greenlang_crypto.sqlalchemy.orm"
    assert importlib.import_module(_orm_loader._HOOKS).__name__ == _orm_loader._HOOKS
    assert _orm_loader.__all__ == []


def test_the_loader_listens_before_mappers_are_configured() -> None:
    assert event.contains(Mapper, "before_configured", _orm_loader._load_hooks)


def test_every_configuration_run_loads_the_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []
    real = importlib.import_module

    def record(name: str, package: str | None = None) -> ModuleType:
        loaded.append(name)
        return real(name, package)

    monkeypatch.setattr(_orm_loader.importlib, "import_module", record)

    class Base(DeclarativeBase):
        pass

    class First(Base):
        __tablename__ = "orm_loader_first"
        id: Mapped[int] = mapped_column(primary_key=True)

    configure_mappers()
    assert loaded == [_orm_loader._HOOKS]

    class Second(Base):
        __tablename__ = "orm_loader_second"
        id: Mapped[int] = mapped_column(primary_key=True)

    configure_mappers()
    assert loaded == [_orm_loader._HOOKS] * 2
    # With every mapper configured, nothing runs again.
    configure_mappers()
    assert loaded == [_orm_loader._HOOKS] * 2
