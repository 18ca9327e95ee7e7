"""Each install flavour on its own: import, ``--help``, ``init`` and a CLI round trip.

A command whose extra is missing must say which extra to install (exit code 2), and importing
the package must not pull in a dependency the user did not ask for.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.install.conftest import clean_env

OPTIONAL = ("boto3", "sqlalchemy", "fastapi", "prometheus_client", "jwt", "uvicorn", "psycopg")

# flavour -> (modules it must have, a command that must ask for a missing extra or None)
FLAVOURS: dict[str, tuple[tuple[str, ...], tuple[str, str] | None]] = {
    "": ((), ("db", "sqlalchemy")),
    "cli": (("tqdm",), ("serve", "api")),
    "cli,api": (("fastapi", "uvicorn", "jwt"), ("db", "sqlalchemy")),
    "aws": (("boto3",), ("token", "api")),
    "sqlalchemy": (("sqlalchemy", "psycopg"), ("serve", "api")),
    "all": (("boto3", "sqlalchemy", "fastapi", "tqdm"), None),
}


def _run(
    venv: Path, *args: str, data_dir: Path, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(venv / "bin" / "greenlang-crypto"), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
        env=clean_env(GLC_DATA_DIR=str(data_dir)),
    )


@pytest.mark.parametrize("extras", list(FLAVOURS), ids=lambda e: e or "no-extras")
def test_flavour(extras: str, make_venv: Callable[..., Path], tmp_path: Path) -> None:
    venv = make_venv(extras)
    python = str(venv / "bin" / "python")
    has, gated = FLAVOURS[extras]

    # The installed wheel is what runs, and importing it imports no optional dependency.
    probe = (
        "import json, sys, greenlang_crypto, greenlang_crypto.service, greenlang_crypto.cli;"
        "greenlang_crypto.cli.build_parser();"
        f"print(json.dumps([greenlang_crypto.__file__, [m for m in {OPTIONAL!r} "
        "if m in sys.modules]]))"
    )
    out = subprocess.run(
        [python, "-c", probe], capture_output=True, check=True, timeout=60, env=clean_env()
    )
    location, imported = json.loads(out.stdout)
    assert str(venv) in location and "site-packages" in location
    assert imported == []
    for module in has:
        subprocess.run([python, "-c", f"import {module}"], check=True, timeout=60, env=clean_env())

    data = tmp_path / "data"
    helptext = _run(venv, "--help", data_dir=data)
    assert helptext.returncode == 0 and b"encrypt" in helptext.stdout
    assert not data.exists()  # --help creates nothing

    init = _run(venv, "init", data_dir=data)
    assert init.returncode == 0, init.stderr
    ctx = ("--tenant", "acme", "--data-class", "pii")
    enc = _run(venv, "encrypt", *ctx, data_dir=data, stdin=b"alice@example.com")
    assert enc.returncode == 0, enc.stderr
    assert b"alice" not in enc.stdout
    dec = _run(venv, "decrypt", *ctx, data_dir=data, stdin=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == b"alice@example.com"

    if gated is not None:
        command, extra = gated
        res = _run(venv, command, "--anything", data_dir=data)
        assert res.returncode == 2
        assert f'pip install "greenlang-crypto[{extra}]"'.encode() in res.stderr
        assert b"Traceback" not in res.stderr
