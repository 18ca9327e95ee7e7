"""The argument parser of the CLI (:mod:`greenlang_crypto.cli.parser`)."""

from __future__ import annotations

import pytest

from greenlang_crypto import cli
from greenlang_crypto.cli import parser


def _stub(args: object) -> int:
    return 0


RUN = dict.fromkeys(parser.BUILTIN_COMMANDS, _stub)


@pytest.mark.parametrize(
    ("argv", "builtin"),
    [
        (["encrypt", "--tenant", "t"], True),
        (["--data-dir", "/d", "keys", "list"], True),
        (["--config=/c.toml", "--debug", "status"], True),
        (["--data-dir", "status"], False),  # "status" is the option's value here
        (["serve"], False),
        (["--help"], False),
        (["--data", "/d", "init"], False),  # an abbreviation: the full parser decides
        ([], False),
    ],
)
def test_names_builtin_command(argv: list[str], builtin: bool) -> None:
    assert parser.names_builtin_command(argv) is builtin


def test_build_binds_the_dispatch_table() -> None:
    p = parser.build("desc", RUN, extensions=False)
    args = p.parse_args(["--data-dir", "/d", "decrypt", "--tenant", "t", "--data-class", "c"])
    assert args.func is _stub and args.command == "decrypt" and args.data_dir == "/d"
    assert args.range is None
    keys = p.parse_args(["keys", "retire", "--below", "3", "--force"])
    assert (keys.keys_command, keys.below, keys.force) == ("retire", 3, True)


def test_without_extensions_their_names_stay_bare_choices() -> None:
    p = parser.build("desc", RUN, extensions=False)
    args = p.parse_args(["serve"])
    assert args.command == "serve" and not hasattr(args, "func")


def test_bad_threads_and_modes_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    p = parser.build("desc", RUN, extensions=False)
    for argv in (
        ["encrypt", "--tenant", "t", "--data-class", "c", "--threads", "0"],
        ["decrypt", "--tenant", "t", "--data-class", "c", "--mode", "999"],
    ):
        with pytest.raises(SystemExit) as exc:
            p.parse_args(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "--mode" in err


def test_an_unknown_argument_of_an_installed_command_is_still_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["status", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
