"""The docs block collector: what it finds, what it refuses, and that a bad block fails."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.docs.blocks import Block, DirectiveError, chains, python_blocks, run_block

PAGE = Path("page.md")


def blocks_of(text: str) -> list[Block]:
    return python_blocks(PAGE, textwrap.dedent(text))


def test_finds_python_blocks_and_their_lines() -> None:
    found = blocks_of(
        """\
        # Title

        ```python
        x = 1
        ```

        ```bash
        echo not python
        ```

        ```py title="short"
        y = 2
        ```
        """
    )
    assert [(b.line, b.source) for b in found] == [(4, "x = 1\n"), (12, "y = 2\n")]


def test_blocks_inside_list_items_are_dedented() -> None:
    found = blocks_of(
        """\
        - a step:

            ```python
            if True:
                z = 3
            ```
        """
    )
    assert found[0].source == "if True:\n    z = 3\n"


def test_a_longer_fence_holds_a_shorter_one() -> None:
    found = blocks_of(
        """\
        ````python
        s = '''
        ```
        '''
        ````
        """
    )
    assert found[0].source == "s = '''\n```\n'''\n"


def test_directives_apply_to_the_next_block_only() -> None:
    found = blocks_of(
        """\
        <!-- docs: no-run (needs a real AWS account) -->
        ```python
        a = 1
        ```

        <!-- docs: requires GLC_REDIS_URL, GLC_PG_URL; continue -->

        ```python
        b = 2
        ```

        Some prose.

        ```python
        c = 3
        ```
        """
    )
    assert [b.no_run for b in found] == ["needs a real AWS account", None, None]
    assert found[1].requires == ("GLC_REDIS_URL", "GLC_PG_URL")
    assert [b.continues for b in found] == [False, True, False]


def test_a_directive_followed_by_prose_is_an_error() -> None:
    with pytest.raises(DirectiveError, match=r"page\.md:2: a docs directive must precede"):
        blocks_of("<!-- docs: continue -->\nSome prose.\n\n```python\nx = 1\n```\n")


@pytest.mark.parametrize(
    "directive",
    ["<!-- docs: no-run -->", "<!-- docs: norun (x) -->", "<!-- docs: requires redis -->"],
)
def test_an_unknown_or_incomplete_directive_is_an_error(directive: str) -> None:
    with pytest.raises(DirectiveError):
        blocks_of(f"{directive}\n```python\nx = 1\n```\n")


def test_an_unclosed_fence_is_an_error() -> None:
    with pytest.raises(DirectiveError, match="unclosed"):
        blocks_of("```python\nx = 1\n")


def test_continue_chains_blocks_and_needs_a_block_before_it() -> None:
    found = blocks_of(
        """\
        ```python
        a = 1
        ```
        <!-- docs: no-run (illustration) -->
        ```python
        never()
        ```
        <!-- docs: continue -->
        ```python
        b = a + 1
        ```
        """
    )
    (chain,) = chains(found)
    namespace: dict[str, object] = {}
    for block in chain:
        run_block(block, namespace)
    assert namespace["b"] == 2
    with pytest.raises(DirectiveError, match="no block before it"):
        chains(blocks_of("<!-- docs: continue -->\n```python\nx = 1\n```\n"))


def test_a_failing_block_fails_and_points_at_the_page_line() -> None:
    (block,) = blocks_of("# T\n\n```python\nx = 1\nassert x == 2\n```\n")
    with pytest.raises(AssertionError) as info:
        run_block(block, {})
    assert info.traceback[-1].lineno + 1 == 5  # pytest's line numbers are 0-based
    assert str(info.traceback[-1].path) == "page.md"


def test_a_block_using_a_removed_name_fails() -> None:
    (block,) = blocks_of("```python\nfrom greenlang_crypto.service import NoSuchName\n```\n")
    with pytest.raises(ImportError):
        run_block(block, {})
