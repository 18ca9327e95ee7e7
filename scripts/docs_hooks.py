"""MkDocs hooks (``hooks:`` in mkdocs.yml): fill the generated reference tables at build time.

A page line ``<!-- glc:generate NAME -->`` is replaced by the table that
``scripts/docs_reference.py`` generates under that name from the code (the CLI parser, the
configuration dataclass, a live metrics collector, the audit events, the exceptions). An
unknown name fails the build. Nothing generated is written into docs/.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

_MARKER = re.compile(r"^<!-- glc:generate (?P<name>[a-z_]+) -->$", re.MULTILINE)


def _generators() -> Any:
    path = Path(__file__).with_name("docs_reference.py")
    name = "_glc_docs_reference"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


_cache: dict[str, str] = {}


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replaces every generation marker of ``page`` with its table."""
    generators = _generators().GENERATORS

    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in generators:
            raise ValueError(f"{page.file.src_uri}: no generator named {name!r}")
        if name not in _cache:
            _cache[name] = generators[name]()
        return _cache[name]

    return _MARKER.sub(fill, markdown)


def on_pre_build(**_: Any) -> None:
    """Forgets the tables of a previous build (``mkdocs serve`` rebuilds in one process)."""
    _cache.clear()
