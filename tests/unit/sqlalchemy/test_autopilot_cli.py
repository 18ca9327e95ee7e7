"""``greenlang-crypto db autopilot`` without a database: parser, --model, --version-column.

The command against PostgreSQL (its report, exit codes and audit records) is tested in
``tests/integration/test_autopilot.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from greenlang_crypto import cli
from greenlang_crypto.exceptions import ConfigurationError, InvalidArgumentError
from greenlang_crypto.sqlalchemy import _autopilot_cli as ap


def test_the_command_is_registered_under_db_and_needs_once_and_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        ["db", "autopilot", "--once", "--model", "app.models:Base", "--budget-seconds", "5"]
    )
    assert (args.once, args.model, args.budget_seconds) == (True, "app.models:Base", 5.0)
    assert (args.max_rows_per_second, args.json, args.keep_stored_deks) == (None, False, False)
    assert args.version_column == []
    for given, missing in ((["--model", "m:B"], "--once"), (["--once"], "--model")):
        with pytest.raises(SystemExit):
            parser.parse_args(["db", "autopilot", *given])
        assert f"required: {missing}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["db", "autopilot", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "0 done" in shown and "10 progressing" in shown and "20 blocked" in shown


def test_load_models_names_what_is_wrong() -> None:
    with pytest.raises(InvalidArgumentError, match=r"expected package\.module:Base"):
        ap.load_models("no-colon")
    with pytest.raises(InvalidArgumentError, match="cannot import 'no_such_mod_xyz'"):
        ap.load_models("no_such_mod_xyz:Base")
    with pytest.raises(InvalidArgumentError, match="no attribute 'Nope'"):
        ap.load_models("greenlang_crypto.sqlalchemy.autopilot:Nope")
    loaded = ap.load_models("greenlang_crypto.sqlalchemy.autopilot:ColumnRegistry")
    assert loaded.__name__ == "ColumnRegistry"


def test_version_columns() -> None:
    assert ap._version_columns(["users.email=email_kv", "app.docs.body=kv"]) == {
        "users.email": "email_kv",
        "app.docs.body": "kv",
    }
    for bad in ("users.email", "email=kv", "users.email="):
        with pytest.raises(InvalidArgumentError, match=r"TABLE\.COLUMN=VERSION_COLUMN"):
            ap._version_columns([bad])


def test_the_url_comes_from_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("GLC_DATABASE_URL", "GLC_PG_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="pass --url"):
        ap._url(argparse.Namespace(url=None))
    monkeypatch.setenv("GLC_PG_URL", "postgresql://pg/x")
    assert ap._url(argparse.Namespace(url=None)) == "postgresql://pg/x"
    monkeypatch.setenv("GLC_DATABASE_URL", "postgresql://db/x")
    assert ap._url(argparse.Namespace(url=None)) == "postgresql://db/x"
    assert ap._url(argparse.Namespace(url="postgresql://f/x")) == "postgresql://f/x"


def test_keys_autopilot_runs_as_db_autopilot_with_the_global_options(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran: list[argparse.Namespace] = []

    def fake(args: argparse.Namespace, make_service: object) -> int:
        ran.append(args)
        return 10

    monkeypatch.setattr(ap, "_cmd_autopilot", fake)
    data = str(tmp_path / "d")
    code = cli.main(["--data-dir", data, "keys", "autopilot", "--once", "--model", "m:B", "--json"])
    assert code == 10
    [args] = ran[:1]
    assert (args.command, args.db_command, args.once, args.model, args.json) == (
        "db",
        "autopilot",
        True,
        "m:B",
        True,
    )
    assert str(args.data_dir) == data
    # A global option's value may be the word "keys" itself.
    assert cli.main(["--data-dir", "keys", "keys", "autopilot", "--once", "--model", "m:B"]) == 10
    assert str(ran[-1].data_dir) == "keys" and ran[-1].model == "m:B"
    # Its usage errors are those of `db autopilot`.
    with pytest.raises(SystemExit) as exited:
        cli.main(["keys", "autopilot", "--model", "m:B"])
    assert exited.value.code == 2
    assert "required: --once" in capsys.readouterr().err
