"""Fixtures of the in-process CLI tests: an initialized embedded default to run commands on."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenlang_crypto import cli
from tests.clirun import RunCli


@pytest.fixture
def initialized(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The data directory of an embedded default that ``init`` created."""
    d = tmp_path / "data"
    assert cli.main(["--data-dir", str(d), "init"]) == 0
    capsys.readouterr()
    return d


@pytest.fixture
def run_cli(initialized: Path, capsys: pytest.CaptureFixture[str]) -> RunCli:
    """``cli.main`` on the initialized data directory, with what it printed."""

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--data-dir", str(initialized), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
