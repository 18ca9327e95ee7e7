"""Fixtures of the column-job unit tests: a local service, and an engine that cannot connect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EncryptionService]:
    d = tmp_path / "keys"
    d.mkdir()
    LocalKeyProvider(d).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=d))
    yield svc
    svc.close()


@pytest.fixture
def engine() -> Iterator[Engine]:
    # Planning or building a job never connects: an engine that cannot connect shows it.
    eng = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    yield eng
    eng.dispose()
