"""The commands other packages add to the CLI (:mod:`greenlang_crypto.cli.extensions`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from greenlang_crypto import cli
from greenlang_crypto.cli._io import UsageError
from greenlang_crypto.cli.extensions import (
    EXTENSIONS,
    extension_commands,
    read_checkpoint_files,
)


def test_the_extensions_add_their_commands_in_order() -> None:
    assert extension_commands() == ["serve", "token", "audit", "db", "verify"]
    assert len({ext.module for ext in EXTENSIONS}) == len(EXTENSIONS)
    usage = cli.build_parser().format_usage()
    assert "{init,encrypt,decrypt,keys,status,serve,token,audit,db,verify}" in usage


@pytest.mark.parametrize(
    ("command", "extra", "module"),
    [
        (["db", "migrate", "--url", "postgresql://x/y"], "sqlalchemy", "sqlalchemy"),
        (["serve", "--port", "1"], "api", "fastapi"),
        (["token", "--tenant", "a"], "api", "jwt"),
    ],
)
def test_a_missing_extra_names_the_extra(
    command: list[str],
    extra: str,
    module: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes it unimportable for this test
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert f'pip install "greenlang-crypto[{extra}]"' in err
    assert f"greenlang-crypto[{extra}]" in cli.build_parser().format_help()


def _verify_args(**kw: object) -> argparse.Namespace:
    values: dict[str, object] = {"command": "audit", "audit_command": "verify"}
    values.update(kw)
    return argparse.Namespace(**values)


def test_checkpoint_files_are_read_only_for_audit_verify(tmp_path: Path) -> None:
    absent = str(tmp_path / "absent.jsonl")
    other = argparse.Namespace(command="status", checkpoint_file=[absent])
    read_checkpoint_files(other)  # not audit verify: the files are not looked at
    assert other.checkpoint_file == [absent]
    with pytest.raises(UsageError, match=f"cannot read {absent}"):
        read_checkpoint_files(_verify_args(checkpoint_file=[absent], checkpoint=None))


def test_a_checkpoint_file_without_checkpoints_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("just a log line\n")
    with pytest.raises(UsageError, match="holds no checkpoint"):
        read_checkpoint_files(_verify_args(checkpoint_file=[str(empty)], checkpoint=["x"]))
