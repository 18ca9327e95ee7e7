"""The unit tests mirror the package: every module has ``tests/unit/<path>/test_<name>.py``.

``python/greenlang_crypto/api/guard.py`` is tested by ``tests/unit/api/test_guard.py``, and
``python/greenlang_crypto/_forks.py`` by ``tests/unit/test_forks.py`` (leading underscores
dropped). Package markers (``__init__.py``) and ``__main__.py`` have no mirror. A module whose
tests need a server (PostgreSQL, moto, Redis) or a subprocess keeps those under
``tests/integration/<path>/`` and still has a unit mirror for what runs in process.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import greenlang_crypto

ROOT = Path(__file__).resolve().parents[2]
# The package as imported: the checkout's python/ in development, the installed wheel in the
# install check (which holds the same modules).
PACKAGE = Path(greenlang_crypto.__file__).resolve().parent
UNIT = ROOT / "tests" / "unit"
_NO_MIRROR = frozenset({"__init__.py", "__main__.py"})


def mirror_of(module: PurePosixPath) -> PurePosixPath:
    """The unit test file of ``module``, a path relative to the package directory."""
    return PurePosixPath(
        "tests", "unit", *module.parent.parts, f"test_{module.stem.lstrip('_')}.py"
    )


def package_modules() -> list[PurePosixPath]:
    """Every module of the package that needs a mirror, relative to the package directory."""
    return sorted(
        PurePosixPath(path.relative_to(PACKAGE).as_posix())
        for path in PACKAGE.rglob("*.py")
        if path.name not in _NO_MIRROR and "__pycache__" not in path.parts
    )


def test_the_mirror_rule() -> None:
    assert mirror_of(PurePosixPath("api/guard.py")) == PurePosixPath("tests/unit/api/test_guard.py")
    assert mirror_of(PurePosixPath("_forks.py")) == PurePosixPath("tests/unit/test_forks.py")
    assert mirror_of(PurePosixPath("audit/sinks/base.py")) == PurePosixPath(
        "tests/unit/audit/sinks/test_base.py"
    )
    assert mirror_of(PurePosixPath("providers/_kms_errors.py")) == PurePosixPath(
        "tests/unit/providers/test_kms_errors.py"
    )


def test_the_walk_finds_modules_at_every_depth_and_skips_package_markers() -> None:
    modules = set(package_modules())
    assert {PurePosixPath("_forks.py"), PurePosixPath("api/guard.py")} <= modules
    assert PurePosixPath("audit/sinks/base.py") in modules
    assert not any(m.name in _NO_MIRROR for m in modules)


def test_every_module_has_its_unit_test_mirror() -> None:
    missing = [
        f"{m} -> {mirror_of(m)}" for m in package_modules() if not (ROOT / mirror_of(m)).is_file()
    ]
    assert not missing, f"{len(missing)} module(s) without a unit test mirror:\n" + "\n".join(
        missing
    )
