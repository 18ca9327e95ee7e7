"""The README's "Using it" snippet runs as written, on a data directory that does not exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def using_it_snippet() -> str:
    """The first Python block of the README's "Using it" section."""
    text = README.read_text()
    section = text[text.index("## Using it") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_using_it_snippet_runs_in_a_fresh_data_dir(tmp_path: Path) -> None:
    snippet = using_it_snippet()
    assert "init_local" in snippet
    data = tmp_path / "never-created"
    for _ in range(2):  # the second run finds what the first one created
        res = subprocess.run(
            [sys.executable, "-c", snippet],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=dict(os.environ, GLC_DATA_DIR=str(data)),
        )
        assert res.returncode == 0, res.stderr
    assert (data.stat().st_mode & 0o777) == 0o700
    keys = list((data / "master-keys").iterdir())
    assert len(keys) == 1 and (keys[0].stat().st_mode & 0o777) == 0o600
