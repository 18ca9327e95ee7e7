"""What the documentation imports from :mod:`greenlang_crypto.api` is exported by it.

README.md and the package docstring show ``from greenlang_crypto.api import ...`` and name
``greenlang_crypto.api.<name>`` in prose; every such name must be in ``__all__`` and resolve,
so that removing an export (or documenting one that does not exist) fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import greenlang_crypto.api as api

ROOT = Path(__file__).resolve().parents[3]
_FROM_IMPORT = re.compile(r"from\s+greenlang_crypto\.api\s+import\s+(\([^)]*\)|[^\n]+)")
_DOTTED = re.compile(r"greenlang_crypto\.api\.([A-Za-z_][A-Za-z0-9_]*)")


_API_DIR = Path(api.__file__).parent


def imported_names(text: str) -> set[str]:
    """The names ``text`` imports from, or names as an attribute of, greenlang_crypto.api."""
    names: set[str] = set()
    for match in _FROM_IMPORT.finditer(text):
        listed = match.group(1).strip("()")
        for line in listed.splitlines():
            for item in line.split("#", 1)[0].split(","):
                if item.strip():
                    names.add(item.split(" as ", 1)[0].strip())
    for match in _DOTTED.finditer(text):
        name = match.group(1)
        # ``greenlang_crypto.api.app`` and friends are modules of the package, not exports.
        # Asked of the package as installed: the wheel check runs these tests without the
        # source tree beside them.
        if not (_API_DIR / f"{name}.py").exists():
            names.add(name)
    return names


def test_the_parser_reads_single_line_parenthesized_and_dotted_imports() -> None:
    text = (
        "from greenlang_crypto.api import a, b as c  # comment\n"
        "```python\nfrom greenlang_crypto.api import (\n    d,\n    e,  # why\n)\n```\n"
        "call `greenlang_crypto.api.f(app)`; the module greenlang_crypto.api.routes is not one\n"
    )
    assert imported_names(text) == {"a", "b", "d", "e", "f"}


def test_the_readme_imports_resolve() -> None:
    names = imported_names((ROOT / "README.md").read_text(encoding="utf-8"))
    # The README shows embedding: the names that bug reports were about are among them.
    assert {"dev_settings", "mount_encryption_api", "metrics_router", "health_router"} <= names
    missing = sorted(n for n in names if n not in api.__all__)
    assert not missing, f"README imports names greenlang_crypto.api does not export: {missing}"
    for name in names:
        assert getattr(api, name) is not None


def test_the_package_docstring_imports_resolve() -> None:
    assert api.__doc__ is not None
    names = imported_names(api.__doc__)
    assert "mount_encryption_api" in names
    assert set(names) <= set(api.__all__)


def test_every_export_resolves_and_star_import_gives_them_all() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert set(api.__all__) <= set(dir(api))
    with pytest.raises(AttributeError):
        api.no_such_name  # noqa: B018 - the attribute access is the test
    # In a fresh interpreter, where nothing was resolved yet.
    code = (
        "from greenlang_crypto.api import *\n"
        "import greenlang_crypto.api as api\n"
        "missing = [n for n in api.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
        "print(dev_settings.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "greenlang_crypto.api.auth"
