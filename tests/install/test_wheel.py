"""The built wheel passes the unit tests with no Rust toolchain present."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

from tests.install.conftest import REPO_ROOT, clean_env, no_rust_path

TEST_DEPS = (
    "pytest>=8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "cryptography>=42",
    "cryptography-vectors>=42",
    "httpx>=0.27",
    # starlette's TestClient (tests/unit/api) prefers httpx2 and warns, which the test
    # settings turn into an error, when only httpx is installed; the dev extra has it too.
    "httpx2",
)


def test_wheel_is_abi3_manylinux_and_complete(wheel: Path) -> None:
    tags = wheel.name.removesuffix(".whl").split("-")[2:]
    assert tags[0] == "cp311" and tags[1] == "abi3", tags
    assert tags[2].startswith("manylinux_"), tags
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "greenlang_crypto/py.typed",
        "greenlang_crypto/_core.pyi",
        "greenlang_crypto/_core.abi3.so",
        "greenlang_crypto/sql/V011__field_level_encryption.sql",
        "greenlang_crypto/sql/V011__field_level_encryption.down.sql",
        "greenlang_crypto/sql/example_columns.sql",
        "greenlang_crypto/sql/example_columns.down.sql",
    ):
        assert required in names, required


def test_auditwheel_show(wheel: Path, make_venv: Callable[..., Path]) -> None:
    venv = make_venv("", "auditwheel")
    out = subprocess.run(
        [str(venv / "bin" / "auditwheel"), "show", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=clean_env(),
    )
    text = " ".join(out.stdout.split())  # auditwheel wraps its lines
    assert "is consistent with the following platform tag" in text
    assert 'platform tag: "manylinux_' in text


def _server_tests(directory: str, names: list[str]) -> set[str]:
    """What the copy leaves out: caches, and the suites that need servers or the checkout.

    ``tests/api`` needs the services; ``tests/unit/api`` is a unit suite like any other and is
    copied (the unit mirror check expects it).
    """
    skipped = {"__pycache__", "install", "infra", "integration"}
    if Path(directory).name == "tests":
        skipped.add("api")
    return skipped.intersection(names)


def test_unit_tests_pass_against_the_installed_wheel(
    make_venv: Callable[..., Path], tmp_path: Path
) -> None:
    assert shutil.which("cargo", path=no_rust_path()) is None
    venv = make_venv("all", *TEST_DEPS)
    # A copy of the tests beside the project's pytest settings, but without python/: the only
    # greenlang_crypto importable is the installed wheel.
    work = tmp_path / "proj"
    work.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, work / name)
    shutil.copytree(
        REPO_ROOT / "tests",
        work / "tests",
        ignore=_server_tests,
    )
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import greenlang_crypto; print(greenlang_crypto.__file__)",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    )
    assert str(venv) in probe.stdout
    res = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pytest",
            "tests/unit",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-x",
            # Services (PostgreSQL, moto) are not started for the install checks; the tests
            # that need them run against the checkout in the main suite.
            "-m",
            "not integration",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
        env=clean_env(),
    )
    tail = res.stdout[-3000:]
    assert res.returncode == 0, tail + res.stderr[-2000:]
    assert " passed" in tail
