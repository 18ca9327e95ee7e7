"""Fixtures for install tests: the wheel is built once, then installed into throwaway venvs.

These tests check what a user gets from ``pip install``: the built wheel (never the editable
checkout), one virtualenv per install flavour, and no Rust toolchain on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def no_rust_path() -> str:
    """``PATH`` without any directory that holds cargo or rustc."""
    keep = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not (Path(d, "cargo").exists() or Path(d, "rustc").exists())
    ]
    return os.pathsep.join(keep)


def clean_env(**extra: str) -> dict[str, str]:
    """An environment like a user's shell: no venv, no project paths, no Rust on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"} and not k.startswith("GLC_")
    }
    env["PATH"] = no_rust_path()
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The abi3 wheel: ``$GLC_WHEEL_DIR`` (made by ``make wheel``) or built here once."""
    given = os.environ.get("GLC_WHEEL_DIR")
    out = Path(given) if given else tmp_path_factory.mktemp("wheel")
    if not given:
        subprocess.run(
            [sys.executable, "-m", "maturin", "build", "--release", "-q", "-o", str(out)],
            cwd=REPO_ROOT,
            check=True,
            timeout=1200,
            env=dict(os.environ, AWS_LC_SYS_CMAKE_BUILDER="0"),
        )
    wheels = sorted(out.glob("greenlang_crypto-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="session")
def make_venv(
    tmp_path_factory: pytest.TempPathFactory, wheel: Path
) -> Iterator[Callable[..., Path]]:
    """Creates a venv with the wheel installed (with the given extras and extra packages)."""
    made: list[Path] = []

    def make(extras: str, *packages: str) -> Path:
        root = tmp_path_factory.mktemp("venv-" + (extras.replace(",", "-") or "bare"))
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
        python = root / "bin" / "python"
        target = f"{wheel}[{extras}]" if extras else str(wheel)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                target,
                *packages,
            ],
            check=True,
            timeout=900,
            env=clean_env(),
        )
        made.append(root)
        return root

    yield make
    for root in made:
        shutil.rmtree(root, ignore_errors=True)
