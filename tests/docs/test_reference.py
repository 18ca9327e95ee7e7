"""The generated reference pages (scripts/docs_reference.py) against the code they describe.

The generators read the code at build time; these tests check the parts that are written by
hand (the other environment variables, the admin actions) still match the sources, that the
site's hook fills the pages, and that every command shown on a page exists.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from greenlang_crypto import events, exceptions
from greenlang_crypto.cli import build_parser
from greenlang_crypto.cli.errors import exit_code
from greenlang_crypto.config import EncryptionServiceConfig

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ref = _load("docs_reference")
hooks = _load("docs_hooks")


def test_every_glc_variable_in_the_sources_is_documented() -> None:
    fields = {f"GLC_{f.name.upper()}" for f in dataclasses.fields(EncryptionServiceConfig)}
    in_sources = ref.env_names_in_sources()
    assert in_sources - fields - set(ref.OTHER_ENV) == set()
    # And nothing documented that the code no longer reads.
    assert set(ref.OTHER_ENV) <= in_sources
    assert not set(ref.OTHER_ENV) & fields


def test_the_configuration_table_has_every_field_and_its_meaning() -> None:
    page = ref.config_reference()
    for spec in dataclasses.fields(EncryptionServiceConfig):
        row = next(line for line in page.splitlines() if line.startswith(f"| `{spec.name}` |"))
        assert f"`GLC_{spec.name.upper()}`" in row
        assert not row.endswith("|  |"), f"{spec.name} has no description in the docstring"


def test_every_audit_action_in_the_sources_is_documented() -> None:
    literal = ref.audit_actions_in_sources()
    documented = set(ref.ADMIN_ACTIONS) | set(events.EVENTS)
    # "_unparseable" marks a line of a JSON-lines log that is not a record (a reader's token).
    assert literal - documented - {"_unparseable"} == set()
    commands = (ROOT / "python/greenlang_crypto/sqlalchemy/commands.py").read_text()
    for action in ref.ADMIN_ACTIONS:
        # db_encrypt and db_reencrypt are spelled f"db_{mode}" in the db commands.
        formatted = action in ("db_encrypt", "db_reencrypt") and 'f"db_{mode}"' in commands
        assert action in literal or formatted, f"{action} is documented but never recorded"


def test_every_service_event_has_a_row() -> None:
    assert {cls.name for cls in ref.event_types()} == set(events.EVENTS)
    page = ref.audit_reference()
    for name in events.EVENTS:
        assert f"| `{name}` |" in page


def test_every_exception_has_a_section_and_the_cli_exit_code() -> None:
    page = ref.errors_reference()
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert f"### {name}\n" in page
        row = next(line for line in page.splitlines() if line.startswith(f"| [`{name}`]"))
        assert f"| {exit_code(cls.__new__(cls))} |" in row
    assert "| [`KeyStoreUnavailableError`](#keystoreunavailableerror) | `UnavailableError`" in page


def test_every_metric_the_monitoring_files_use_is_exported() -> None:
    exported: set[str] = set()
    for family in ref.collect_metric_families():
        exported |= {family.name, f"{family.name}_total"} | {s.name for s in family.samples}
        if family.type == "histogram":
            exported |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    used = ref._monitoring_names()
    assert used, "no metric found in monitoring/"
    assert set(used) - exported == set()
    page = ref.metrics_reference()
    assert (
        "| `gl_encryption_operations_total` | counter | `operation`, `status`, `data_class` |"
        in page
    )


def _parsers() -> dict[tuple[str, ...], Any]:
    import argparse

    found: dict[tuple[str, ...], Any] = {}

    def walk(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        found[path] = parser
        for name, _help, sub in ref._subcommands(parser):
            walk((*path, name), sub)

    walk((), build_parser())
    return found


def test_the_cli_page_lists_every_command_and_option() -> None:
    page = ref.cli_reference()
    for path, parser in _parsers().items():
        assert f"`{' '.join(('greenlang-crypto', *path))}`" in page
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in page


def _shell_commands(pages: list[Path]) -> list[tuple[str, int, list[str]]]:
    """Every ``greenlang-crypto ...`` line of a bash block of ``pages``, split into words."""
    out = []
    for page in pages:
        inside = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if re.match(r"^\s*```", line):
                inside = bool(re.match(r"^\s*```(bash|sh|console)\b", line)) and not inside
                continue
            text = line.strip().removeprefix("$ ")
            if inside and text.startswith("greenlang-crypto "):
                words = shlex.split(text.split(" #", 1)[0].rstrip("\\ &"), comments=False)
                out.append((page.name, number, words))
    return out


def _command_problems(commands: list[tuple[str, int, list[str]]]) -> list[str]:
    """Commands that name no command of the parser, or an option their command lacks."""
    parsers = _parsers()
    problems = []
    for page, number, words in commands:
        path: tuple[str, ...] = ()
        for word in words[1:]:
            if (*path, word) in parsers:
                path = (*path, word)
        if not path:
            problems.append(f"{page}:{number}: no command in {words}")
            continue
        # The options of the command and of every parser above it.
        known = {
            option
            for depth in range(len(path) + 1)
            for action in parsers[path[:depth]]._actions
            for option in action.option_strings
        }
        for word in words[1:]:
            option = word.split("=", 1)[0]
            if option.startswith("--") and option not in known:
                problems.append(f"{page}:{number}: {' '.join(path)} has no {option}")
    return problems


def test_every_command_shown_on_a_page_exists() -> None:
    commands = _shell_commands(sorted((ROOT / "docs").rglob("*.md")))
    assert len(commands) >= 10
    assert _command_problems(commands) == []


def test_a_page_showing_a_wrong_command_or_option_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        "greenlang-crypto keys rotate --wrapping-key-id k1     # fine\n"
        "greenlang-crypto keys rotate --no-such-flag\n"
        "greenlang-crypto rotate-everything\n"
        "```\n"
        "greenlang-crypto outside-a-block --ignored\n"
    )
    assert _command_problems(_shell_commands([page])) == [
        "page.md:3: keys rotate has no --no-such-flag",
        "page.md:4: no command in ['greenlang-crypto', 'rotate-everything']",
    ]


class _Page:
    class file:  # the shape of mkdocs' Page.file
        src_uri = "x.md"


def test_the_hook_fills_the_markers_and_refuses_an_unknown_one() -> None:
    hooks.on_pre_build()
    filled = hooks.on_page_markdown("# X\n\n<!-- glc:generate config -->\n", page=_Page())
    assert "`GLC_CACHE_TTL_SECONDS`" in filled
    assert "glc:generate" not in filled
    with pytest.raises(ValueError, match="no generator named 'nope'"):
        hooks.on_page_markdown("<!-- glc:generate nope -->", page=_Page())


def test_every_alert_rule_has_a_row_without_templates() -> None:
    rules = (ROOT / "monitoring/alerts/greenlang-crypto.rules.yml").read_text()
    names = re.findall(r"^\s*- alert: (\w+)$", rules, re.MULTILINE)
    page = ref.alerts_reference()
    assert len(names) >= 5
    for name in names:
        assert f"| `{name}` |" in page
    assert "{{" not in page
