"""``greenlang-crypto verify`` (:mod:`greenlang_crypto.compliance.commands`), in process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from greenlang_crypto import cli
from greenlang_crypto.compliance import commands
from greenlang_crypto.exceptions import ConfigurationError, GreenlangCryptoError, UnavailableError

# No database and no Terraform here: those controls are skipped, which must be allowed.
SKIPPED = [
    "data.columns_encrypted",
    "infra.kms_rotation",
    "infra.deletion_window",
    "infra.multi_region",
    "infra.alarms",
]


@pytest.fixture
def data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.delenv("GLC_AUDIT_URL", raising=False)
    monkeypatch.delenv("GLC_AUDIT_ANCHORS", raising=False)
    d = tmp_path / "data"
    assert cli.main(["--data-dir", str(d), "init"]) == 0
    assert cli.main(["--data-dir", str(d), "keys", "rotate"]) == 0
    capsys.readouterr()
    return d


def _verify(capsys: pytest.CaptureFixture[str], data: Path, *extra: str) -> tuple[int, str, str]:
    code = cli.main(["--data-dir", str(data), "verify", "--terraform", str(data / "none"), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_report_passes_with_the_skips_allowed(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    allow = [a for c in SKIPPED for a in ("--allow-skip", c)]
    code, out, err = _verify(capsys, data, "--json", *allow)
    assert code == 0, err
    by = {c["control"]: c for c in json.loads(out)["controls"]}
    assert by["audit.chain"]["status"] == "pass", by["audit.chain"]
    # A skip that was not allowed fails the run.
    code, out, _ = _verify(capsys, data, "--json")
    assert code == 1
    assert {c["status"] for c in json.loads(out)["controls"]} >= {"pass", "skipped"}


def test_an_unknown_control_is_a_configuration_error(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _verify(capsys, data, "--allow-skip", "no.such.control")
    assert code == 2 and out == ""
    assert err.startswith("error: ConfigurationError: --allow-skip: unknown control(s) no.such")


def test_anchor_grace_is_seconds() -> None:
    assert commands._seconds("0") == 0.0
    assert commands._seconds("2.5") == 2.5
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            commands._seconds(bad)


def test_database_errors_are_typed_by_class_only() -> None:
    import sqlalchemy.exc as sa

    down = commands._database_error(sa.OperationalError("SELECT secret", {}, Exception("x")))
    assert isinstance(down, UnavailableError) and "secret" not in str(down)
    bad_url = commands._database_error(sa.ArgumentError("postgresql://user:pw@host"))
    assert isinstance(bad_url, ConfigurationError) and "pw" not in str(bad_url)
    refused = commands._database_error(sa.ProgrammingError("SELECT x", {}, Exception("no")))
    assert type(refused) is GreenlangCryptoError
    assert "refused the column check (ProgrammingError)" in str(refused)
    assert commands._database_error(ValueError("other")) is None


def test_register_adds_verify_with_its_defaults() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    commands.register(sub, lambda a: None, lambda a: None)
    args = parser.parse_args(["verify", "--column", "users.email"])
    assert args.column == ["users.email"] and args.allow_skip == []
    assert args.anchor_grace == 300.0 and args.json is False
