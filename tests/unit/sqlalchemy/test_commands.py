"""``greenlang-crypto db ...`` (:mod:`greenlang_crypto.sqlalchemy.commands`), in process.

What runs here needs no database: the URL and lease settings, the parser, the arguments of
the worker processes, the settings from flags or ``--model`` up to the first query. Migrations,
column jobs and purges on PostgreSQL are integration tests (``tests/integration/sqlalchemy``:
``test_model_jobs.py`` and ``test_purge.py`` for ``--model`` and ``purge-erased``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from greenlang_crypto import cli
from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.sqlalchemy import blind_index as bi
from greenlang_crypto.sqlalchemy import commands


@pytest.fixture
def no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GLC_DATABASE_URL", "GLC_PG_URL", "GLC_JOB_LEASE_SECONDS"):
        monkeypatch.delenv(name, raising=False)


def test_the_url_comes_from_the_flag_then_the_environment(
    no_url: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match="pass --url or set GLC_DATABASE_URL"):
        commands._url(argparse.Namespace(url=None))
    monkeypatch.setenv("GLC_PG_URL", "postgresql://pg/x")
    assert commands._url(argparse.Namespace(url=None)) == "postgresql://pg/x"
    monkeypatch.setenv("GLC_DATABASE_URL", "postgresql://db/x")
    assert commands._url(argparse.Namespace(url=None)) == "postgresql://db/x"
    assert commands._url(argparse.Namespace(url="postgresql://flag/x")) == "postgresql://flag/x"


def test_the_lease(no_url: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert commands._lease_seconds(argparse.Namespace(lease_seconds=None)) == 60.0
    monkeypatch.setenv("GLC_JOB_LEASE_SECONDS", "15")
    assert commands._lease_seconds(argparse.Namespace(lease_seconds=None)) == 15.0
    assert commands._lease_seconds(argparse.Namespace(lease_seconds=5)) == 5.0
    monkeypatch.setenv("GLC_JOB_LEASE_SECONDS", "soon")
    with pytest.raises(ConfigurationError, match="GLC_JOB_LEASE_SECONDS"):
        commands._lease_seconds(argparse.Namespace(lease_seconds=None))
    with pytest.raises(ConfigurationError, match="positive"):
        commands._lease_seconds(argparse.Namespace(lease_seconds=0))


def test_normalizers_by_name() -> None:
    assert commands._normalizer("none") == ()
    assert commands._normalizer("email") == bi.EMAIL
    assert commands._normalizer("casefold") == (bi.casefold,)
    assert set(commands._NORMALIZERS) == {
        "none", "email", "phone", "casefold", "nfc", "strip"
    }  # fmt: skip
    with pytest.raises(KeyError):
        commands._normalizer("rot13")


def test_worker_arguments_drop_the_options_they_replace() -> None:
    argv = ["db", "reencrypt", "--workers", "4", "--worker=w", "--table", "t", "--ranges", "8"]
    assert commands._strip_option(argv, "--workers") == [
        "db", "reencrypt", "--worker=w", "--table", "t", "--ranges", "8"
    ]  # fmt: skip
    stripped = commands._strip_option(commands._strip_option(argv, "--worker"), "--ranges")
    assert stripped == ["db", "reencrypt", "--workers", "4", "--table", "t"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    commands.register(sub, lambda a: None, lambda a: None)
    return parser


def test_register_builds_the_db_group() -> None:
    parser = _parser()
    args = parser.parse_args(
        ["db", "encrypt-column", "--table", "users", "--column", "email", "--tenant", "acme"]
    )
    assert (args.db_command, args.job_mode, args.phase) == ("encrypt-column", "encrypt", 1)
    assert (args.batch_size, args.workers) == (500, 1)
    # Settings a model decides default to "not given", so --model can tell them apart.
    assert (args.pk, args.kind, args.bind_row, args.index_per_tenant) == (None, None, None, None)
    args = parser.parse_args(
        ["db", "reencrypt", "--table", "t", "--column", "c", "--tenant-column", "tid"]
    )
    assert args.job_mode == "reencrypt" and args.retire is False
    assert (
        parser.parse_args(["db", "reencrypt", "--model", "m:C.a", "--no-bind-row"]).bind_row
        is False
    )
    args = parser.parse_args(["db", "purge-erased", "--model", "m:C.a"])
    assert (args.action, args.dry_run, args.json, args.batch_size) == ("null", False, False, 500)
    with pytest.raises(SystemExit):
        parser.parse_args(["db", "purge-erased", "--model", "m:C.a", "--action", "shred"])
    with pytest.raises(SystemExit):
        parser.parse_args(["db", "reencrypt", "--tenant", "a", "--tenant-column", "b"])


def test_flags_without_a_model_build_the_spec_with_the_old_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _parser().parse_args(
        ["db", "encrypt-column", "--table", "users", "--column", "email", "--tenant", "acme",
         "--index-column", "email_bidx", "--index-normalizer", "email"]
    )  # fmt: skip
    spec = commands.column_spec(args)
    assert (spec.table, spec.column, spec.pk, spec.data_class) == ("users", "email", "id", "pii")
    assert (spec.tenant_id, spec.bind_row, spec.kind, spec.index_length) == (
        "acme",
        False,
        "str",
        16,
    )
    assert spec.index_normalizer == bi.EMAIL and spec.model is None
    assert "warning: the job's settings come from flags alone" in capsys.readouterr().err


def test_a_missing_setting_without_a_model_is_a_typed_error(
    no_url: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["db", "encrypt-column", "--table", "users", "--column", "email"]) == 2
    assert capsys.readouterr().err == (
        "error: InvalidArgumentError: give --model package.module:Class.attribute, or "
        "--tenant or --tenant-column\n"
    )
    assert cli.main(["db", "purge-erased", "--column", "email"]) == 2
    assert "or --table" in capsys.readouterr().err


def test_a_bad_model_path_is_a_typed_error(
    no_url: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "glc_cmd_models.py").write_text(
        "from sqlalchemy import Column, Integer, MetaData, Table\n"
        "class User:\n"
        "    plain = Column('plain', Integer)\n"
        "    Table('u', MetaData(), Column('id', Integer, primary_key=True), plain)\n"
    )
    (tmp_path / "glc_cmd_broken.py").write_text("raise RuntimeError('no config')\n")
    monkeypatch.chdir(tmp_path)  # --model imports from the working directory
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    cases = {
        "glc_cmd_models": "expected package.module:Class.attribute",
        "glc_cmd_models:": "expected package.module:Class.attribute",
        "glc_cmd_models:User.": "expected package.module:Class.attribute",
        "glc_cmd_nowhere:User.email": "cannot import 'glc_cmd_nowhere' (ModuleNotFoundError",
        "glc_cmd_broken:User.email": "cannot import 'glc_cmd_broken' (RuntimeError: no config)",
        "glc_cmd_models:User.email": "no attribute 'email'",
        "glc_cmd_models:User.plain": "not an encrypted column",
    }
    try:
        for path, message in cases.items():
            for command in ("encrypt-column", "reencrypt", "purge-erased"):
                assert cli.main(["db", command, "--model", path]) == 2, path
                err = capsys.readouterr().err
                assert err.startswith(f"error: InvalidArgumentError: --model {path!r}: "), err
                assert message in err, err
    finally:
        for name in ("glc_cmd_models", "glc_cmd_broken"):
            sys.modules.pop(name, None)


def test_db_without_a_url_is_one_error_line(
    no_url: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["db", "status"]) == 2
    assert capsys.readouterr().err == (
        "error: ConfigurationError: no database URL: pass --url or set GLC_DATABASE_URL\n"
    )


def test_migrations_refuse_sqlite(no_url: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["db", "migrate", "--url", "sqlite://"]) == 2
    assert "the SQL migrations are for PostgreSQL" in capsys.readouterr().err
