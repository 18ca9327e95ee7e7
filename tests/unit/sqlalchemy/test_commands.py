"""``greenlang-crypto db ...`` (:mod:`greenlang_crypto.sqlalchemy.commands`), in process.

What runs here needs no database: the URL and lease settings, the parser, the arguments of
the worker processes. Migrations and column jobs on PostgreSQL are integration tests
(``tests/integration/sqlalchemy``).
"""

from __future__ import annotations

import argparse

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


def test_register_builds_the_db_group() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    commands.register(sub, lambda a: None, lambda a: None)
    args = parser.parse_args(
        ["db", "encrypt-column", "--table", "users", "--column", "email", "--tenant", "acme"]
    )
    assert (args.db_command, args.job_mode, args.phase) == ("encrypt-column", "encrypt", 1)
    assert (args.pk, args.batch_size, args.workers, args.kind) == ("id", 500, 1, "str")
    args = parser.parse_args(
        ["db", "reencrypt", "--table", "t", "--column", "c", "--tenant-column", "tid"]
    )
    assert args.job_mode == "reencrypt" and args.retire is False
    with pytest.raises(SystemExit):
        parser.parse_args(["db", "reencrypt", "--table", "t", "--column", "c"])


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
