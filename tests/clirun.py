"""Running the ``greenlang-crypto`` command the way a user does, for tests in any directory.

Not a test module: the unit and integration tests of the CLI import these helpers from here,
so that no test file depends on another one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["RunCli", "one_error_line", "run"]

#: Runs ``greenlang-crypto --data-dir DATA ARGS`` in process: (exit code, stdout, stderr).
RunCli = Callable[..., tuple[int, str, str]]


def run(tmp_path: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Runs ``python -m greenlang_crypto ARGS`` with its data directory in ``tmp_path/data``."""
    env = dict(os.environ, GLC_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def one_error_line(err: str) -> str:
    """The single ``error:`` line that ``err`` must consist of (asserted), without traceback."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
