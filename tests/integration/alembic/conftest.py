"""pytest-alembic's checks carry its ``alembic`` marker; registered here so that they also run
with the plugin itself disabled (``-p no:pytest_alembic``: its collector predates pytest 9)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "alembic: pytest-alembic's built-in migration checks")
