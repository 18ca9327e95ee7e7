"""Shared fixtures for the offline infrastructure checks (Terraform, checkov, promtool).

The tools are installed by ``scripts/install_infra_tools.sh``. A missing tool
skips the tests that need it on a workstation, but fails them when the ``CI``
environment variable is set, so that CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so a missing tool is an error)", pytrace=False)
    pytest.skip(f"{reason}; run scripts/install_infra_tools.sh")


@pytest.fixture(scope="session")
def require_tool() -> Callable[[str, str], str]:
    """Return a function that resolves a tool from an env var or PATH.

    ``require_tool(env_var, default)`` returns the executable's path. ``default``
    is a command name looked up on PATH or a path relative to the repository root.
    """

    def resolve(env_var: str, default: str) -> str:
        candidate = os.environ.get(env_var, default)
        path = Path(candidate)
        if not path.is_absolute() and "/" in candidate:
            path = REPO_ROOT / candidate
        if "/" in candidate or path.is_absolute():
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
            _missing(f"{env_var}: {path} is not an executable file")
        found = shutil.which(candidate)
        if found is None:
            _missing(f"{env_var}: {candidate!r} is not on PATH")
        return str(found)

    return resolve
