"""Finds the ```python blocks of Markdown pages and runs them, for the docs tests.

A block runs on its own, in a fresh namespace, unless a directive comment comes right before
its fence (blank lines between are allowed, nothing else)::

    <!-- docs: no-run (why it cannot run here) -->   never run; the reason is required
    <!-- docs: requires GLC_REDIS_URL -->            run only when these variables are set
    <!-- docs: continue -->                          run in the namespace of the page's
                                                    previous block (a page that builds up)

Several directives are separated by ``;`` (``requires GLC_KMS_ENDPOINT; continue``). Any
other directive is an error, so a misspelt one cannot silently turn a block off.
"""

from __future__ import annotations

import re
import sys
import textwrap
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>`{3,}|~{3,})[ ]*(?P<info>[^`\s]*)[^`]*$")
_DIRECTIVE = re.compile(r"^[ ]*<!--\s*docs:\s*(?P<body>.*?)\s*-->[ ]*$")
_NO_RUN = re.compile(r"^no-run\s*\((?P<why>[^)]+)\)$")
_REQUIRES = re.compile(r"^requires\s+(?P<names>[A-Z][A-Z0-9_]*(\s*,\s*[A-Z][A-Z0-9_]*)*)$")
PYTHON = ("python", "py")


class DirectiveError(ValueError):
    """A ``<!-- docs: ... -->`` comment the checker does not understand."""


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a page.

    Attributes:
        path: The page.
        line: The 1-based line of the block's first code line.
        source: The code, dedented.
        no_run: Why the block is never run, or None.
        requires: Environment variables the block needs.
        continues: Runs in the namespace of the page's previous block.
    """

    path: Path
    line: int
    source: str
    no_run: str | None = None
    requires: tuple[str, ...] = ()
    continues: bool = False

    @property
    def name(self) -> str:
        """``page.md:line``, the block's test id."""
        return f"{self.path.name}:{self.line}"


@dataclass
class _Directives:
    no_run: str | None = None
    requires: list[str] = field(default_factory=list)
    continues: bool = False


def _parse_directive(body: str, where: str) -> _Directives:
    out = _Directives()
    for part in (p.strip() for p in body.split(";")):
        if match := _NO_RUN.match(part):
            out.no_run = match.group("why").strip()
        elif match := _REQUIRES.match(part):
            out.requires += [n.strip() for n in match.group("names").split(",")]
        elif part == "continue":
            out.continues = True
        else:
            raise DirectiveError(f"{where}: unknown docs directive {part!r}")
    return out


def python_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The Python blocks of the Markdown page ``path`` (``text``: its content, if read)."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    pending: _Directives | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if match := _DIRECTIVE.match(line):
            pending = _parse_directive(match.group("body"), f"{path}:{i + 1}")
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip() and pending is not None:
                # Only blank lines may separate a directive from its block: one followed by
                # prose would otherwise be dropped without anyone noticing.
                raise DirectiveError(f"{path}:{i + 1}: a docs directive must precede a block")
            i += 1
            continue
        opener, indent = fence.group("fence"), len(fence.group("indent"))
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if (
                close
                and close.group("fence")[0] == opener[0]
                and not close.group("info")
                and len(close.group("fence")) >= len(opener)
            ):
                break
            text = lines[i]
            # Inside a list item or an admonition: drop the fence's indent, no more.
            cut = len(text) - len(text.lstrip(" "))
            body.append(text[min(indent, cut) :])
            i += 1
        else:
            raise DirectiveError(f"{path}: unclosed code fence")
        start = i - len(body) + 1  # 1-based line of the first code line
        i += 1
        directives, pending = pending or _Directives(), None
        if fence.group("info").lower() not in PYTHON:
            continue
        blocks.append(
            Block(
                path=path,
                line=start,
                source=textwrap.dedent("\n".join(body)) + "\n",
                no_run=directives.no_run,
                requires=tuple(directives.requires),
                continues=directives.continues,
            )
        )
    return blocks


def chains(blocks: list[Block]) -> list[list[Block]]:
    """The runnable blocks grouped into chains: a block and the ``continue`` blocks after it.

    Raises:
        DirectiveError: A ``continue`` block has no runnable block before it on its page.
    """
    out: list[list[Block]] = []
    for block in blocks:
        if block.no_run is not None:
            continue
        if block.continues:
            if not out or out[-1][-1].path != block.path:
                raise DirectiveError(f"{block.name}: 'continue' with no block before it")
            out[-1].append(block)
        else:
            out.append([block])
    return out


def run_block(block: Block, namespace: dict[str, object]) -> None:
    """Executes ``block`` in ``namespace``; tracebacks point at the page's own lines."""
    padded = "\n" * (block.line - 1) + block.source
    exec(compile(padded, str(block.path), "exec"), namespace)


@contextmanager
def block_module(name: str) -> Iterator[dict[str, object]]:
    """A fresh module's namespace, importable as ``name`` while the blocks run.

    Libraries that resolve names through the defining module (SQLAlchemy's ``Mapped[...]``
    annotations, pickle, dataclasses) find it in ``sys.modules`` as they would a real module.
    """
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        yield module.__dict__
    finally:
        del sys.modules[name]
