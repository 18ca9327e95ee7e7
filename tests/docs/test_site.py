"""The site builds in strict mode, and every API name it documents exists.

``make docs`` builds the site too (CI runs it); this test keeps the build in the test suite so
that a change breaking it (a removed public name, a renamed page, a docstring mkdocstrings
cannot parse) fails where the change is tested.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_DIRECTIVE = re.compile(r"^::: (?P<name>[\w.]+)\s*$", re.MULTILINE)


def documented_names() -> list[str]:
    """The objects the pages render with mkdocstrings (``::: module.Name``)."""
    return [
        m.group("name")
        for page in sorted((ROOT / "docs").rglob("*.md"))
        for m in _DIRECTIVE.finditer(page.read_text())
    ]


def resolve(name: str) -> object:
    """The object ``name`` names: the longest importable module, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def test_every_documented_name_exists() -> None:
    names = documented_names()
    assert "greenlang_crypto.service.EncryptionService" in names
    for name in names:
        resolve(name)


def test_resolving_a_removed_name_fails() -> None:
    try:
        resolve("greenlang_crypto.service.NoSuchService")
    except AttributeError:
        return
    raise AssertionError("a missing name resolved")


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert res.returncode == 0, res.stderr[-4000:]
    cli = (tmp_path / "reference" / "cli" / "index.html").read_text()
    assert "greenlang-crypto keys rotate" in cli
    assert "glc:generate" not in cli
    api = (tmp_path / "reference" / "api" / "index.html").read_text()
    assert 'id="greenlang_crypto.service.EncryptionService.encrypt"' in api
