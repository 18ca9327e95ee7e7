"""Generators of the documentation's reference tables, read from the code so they cannot drift.

Each ``*_reference()`` function returns Markdown. The MkDocs hook (scripts/docs_hooks.py)
replaces a ``<!-- glc:generate NAME -->`` line of a page with ``GENERATORS[NAME]()`` at build
time, so nothing generated is committed; tests/docs checks the generators against the code.

Run it directly to print one table: ``python scripts/docs_reference.py cli``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "greenlang_crypto"
MONITORING = ROOT / "monitoring"

#: Environment variables read outside :class:`EncryptionServiceConfig` (whose fields are all
#: ``GLC_<FIELD>``): the name and what it sets. tests/docs checks this against the sources.
OTHER_ENV = {
    "GLC_AUDIT_URL": (
        "The audit sink of servers and commands: `sqlite:///...`, `postgresql://...` or a "
        "JSON-lines file; default the SQLite log `audit.db` in the data directory."
    ),
    "GLC_AUDIT_ANCHORS": (
        "Comma-separated URLs of audit checkpoint anchors every writer publishes to, and "
        "that `audit verify` and `verify` check (see the audit guide)."
    ),
    "GLC_DATABASE_URL": "The database of the `greenlang-crypto db ...` commands (`--url` wins).",
    "GLC_PG_URL": "Fallback for `GLC_DATABASE_URL` (the test suite's PostgreSQL).",
    "GLC_JOB_LEASE_SECONDS": (
        "How long a column job's range lease lasts before another worker may take it over."
    ),
}

#: Audit actions that are not service events: admin actions (written as an ``intent`` record
#: before the change, then ``success`` or ``failure``) and the log's own records.
ADMIN_ACTIONS = {
    "key_rotate": "A new primary key version (`keys rotate`, `POST /keys/rotate`).",
    "key_rewrap": "Stored DEKs rewrapped under a new wrapping key (`keys rewrap`).",
    "key_retire": "Key versions below a minimum retired (`keys retire`, `db reencrypt --retire`).",
    "key_destroy": "An old wrapping key destroyed after a rewrap.",
    "index_key_rotate": "A new blind-index key version.",
    "index_key_retire": "A blind-index key version retired.",
    "branch_key_rotate": "A new branch key for one scope (`keys branch-rotate`), or for each "
    "scope past `branch_rotation_period_seconds` (the autopilot).",
    "branch_key_delete": "A scope's branch keys deleted, crypto-shredding its data.",
    "tenant_erase": "A tenant erased: every key of the tenant deleted (`keys erase`).",
    "envelope_rewrap": "Envelopes re-encrypted under the primary version (`POST /rewrap`).",
    "audit_read": "The audit log queried through the API (`GET /audit`).",
    "access_refused": "API requests refused (401, 403): one record per source and interval.",
    "audit_events_dropped": "Data-path events dropped while the sink was down and the buffer full.",
    "audit_record_rejected": "A record the sink refused to store (it is kept in a dead letter).",
    "db_encrypt": "A column encryption job (`db encrypt-column`), its summary as the outcome.",
    "db_reencrypt": "A column re-encryption job (`db reencrypt`).",
    "db_purge_erased": "Rows of erased tenants NULLed or deleted (`db purge-erased`).",
}


def _cell(text: object) -> str:
    """``text`` as one Markdown table cell: one line, pipes escaped outside code spans.

    (The table extension does not split at a pipe inside backticks, and shows a backslash
    there as it is.)
    """
    parts = " ".join(str(text).split()).split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def _first_paragraph(doc: str | None) -> str:
    text = inspect.cleandoc(doc or "")
    return text.split("\n\n", 1)[0].replace("\n", " ").strip()


def _rst_to_md(text: str) -> str:
    """Sphinx roles (``:class:`~x.Y```) and double backticks as plain Markdown code."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return text.replace("``", "`")


# -- the CLI ----------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            name = ", ".join(f"`{s}`" for s in action.option_strings)
        else:
            name = f"`{action.metavar or action.dest}`"
        if action.nargs == 0:
            value = ""
        elif action.choices is not None:
            value = " | ".join(f"`{c}`" for c in action.choices)
        else:
            value = f"`{action.metavar or action.dest.upper()}`"
        default = action.default
        empty: tuple[object, ...] = (None, False, argparse.SUPPRESS, [], ())
        shown = "" if default in empty or action.nargs == 0 else default
        notes = []
        if action.required and action.option_strings:
            notes.append("required")
        help_text = (action.help or "") % {"default": default} if action.help else ""
        if isinstance(action, argparse._AppendAction) and "repeatable" not in help_text:
            notes.append("repeatable")
        if notes:
            help_text = f"({', '.join(notes)}) {help_text}"
        rows.append(
            f"| {name} | {_cell(value)} | {_cell(f'`{shown}`' if shown != '' else '')} "
            f"| {_cell(help_text)} |"
        )
    return rows


def _cli_section(path: list[str], help_text: str, parser: argparse.ArgumentParser) -> list[str]:
    subs = list(_subcommands(parser))
    out = [f"{'#' * min(len(path) + 1, 6)} `{' '.join(path)}`", ""]
    if help_text:
        out += [help_text[0].upper() + help_text[1:] + ".", ""]
    usage = " ".join(parser.format_usage().split())
    out += ["```text", usage, "```", ""]
    rows = _option_rows(parser)
    if rows:
        out += ["| option | value | default | description |", "|---|---|---|---|", *rows, ""]
    for name, sub_help, sub in subs:
        out += _cli_section([*path, name], sub_help, sub)
    return out


def cli_reference() -> str:
    """Every command and option of ``greenlang-crypto``, from its argument parser."""
    from greenlang_crypto.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"  # usage lines unwrapped, whatever the terminal
    try:
        parser = build_parser()
        return "\n".join(_cli_section(["greenlang-crypto"], "", parser))
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


# -- configuration ----------------------------------------------------------------------------


def _attributes(doc: str | None) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring, as name -> text."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out: dict[str, str] = {}
    current: str | None = None
    inside = False
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            current = match.group(1)
            out[current] = match.group(2)
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def _default(spec: dataclasses.Field[Any]) -> str:
    if spec.default is not dataclasses.MISSING:
        value = spec.default
    elif spec.name == "data_dir":
        return "`$GLC_DATA_DIR` or `~/.greenlang-crypto`"
    else:
        return ""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**16:
        exponent = value.bit_length() - 1
        if value == 2**exponent:
            return f"`2**{exponent}`"
    return f"`{value!r}`" if value not in (None, ()) else ""


def config_reference() -> str:
    """Every configuration key with its variable, default and meaning."""
    from greenlang_crypto.config import EncryptionServiceConfig

    docs = _attributes(EncryptionServiceConfig.__doc__)
    rows = [
        "| key | variable | type | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for spec in dataclasses.fields(EncryptionServiceConfig):
        kind = _cell(f"`{spec.type}`")
        rows.append(
            f"| `{spec.name}` | `GLC_{spec.name.upper()}` | {kind} "
            f"| {_cell(_default(spec))} | {_cell(_rst_to_md(docs.get(spec.name, '')))} |"
        )
    other = ["| variable | meaning |", "|---|---|"]
    other += [f"| `{name}` | {_cell(text)} |" for name, text in sorted(OTHER_ENV.items())]
    return "\n".join(
        [
            "### Keys of `EncryptionServiceConfig`",
            "",
            *rows,
            "",
            "### Other variables",
            "",
            *other,
            "",
        ]
    )


def env_names_in_sources() -> set[str]:
    """Every ``GLC_*`` name spelled out in the package's sources."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        names.update(re.findall(r"\bGLC_[A-Z][A-Z0-9_]*\b", path.read_text()))
    return names


# -- metrics ----------------------------------------------------------------------------------


def _monitoring_names() -> dict[str, set[str]]:
    """Metric names used in ``monitoring/`` (dashboard, alerts) -> the files using them."""
    used: dict[str, set[str]] = {}
    for path in sorted(MONITORING.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".yml", ".yaml"):
            for name in set(re.findall(r"\bgl_[a-z_]+", path.read_text())):
                used.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return used


def collect_metric_families() -> list[Any]:
    """The families a real collector exports, read from a service on a new embedded default.

    The service encrypts, decrypts and fails one decryption first, so every labelled family
    has a sample to read its labels from.
    """
    # The builder's own GLC_* settings (an audit URL, anchors) must not receive these records.
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("GLC_")}
    try:
        return _scrape_new_service()
    finally:
        os.environ.update(saved)


def _scrape_new_service() -> list[Any]:
    from greenlang_crypto import composition
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.context import EncryptionContext
    from greenlang_crypto.exceptions import DecryptionError

    with tempfile.TemporaryDirectory() as tmp:
        config = EncryptionServiceConfig(data_dir=Path(tmp), keyring_refresh_seconds=0)
        composition.create_local_master_key(config.data_dir)
        wired = composition.build_observed_service(config, audit_url=None)
        try:
            svc, ctx = wired.service, EncryptionContext("docs", "pii")
            envelope = svc.encrypt(b"x", ctx)
            svc.decrypt(envelope, ctx)
            with contextlib.suppress(DecryptionError):  # one failure for the failure families
                svc.decrypt(envelope, EncryptionContext("other", "pii"))
            wired.audit.flush()
            return list(wired.metrics.collect())
        finally:
            wired.service.close()
            wired.audit.close()


def _labels(family: Any) -> list[str]:
    names: list[str] = list(getattr(family, "_labelnames", ()))
    for sample in family.samples:
        names += [k for k in sample.labels if k not in names and k != "le"]
    return names


def metrics_reference() -> str:
    """Every Prometheus family the collector exports, with its type, labels and users."""
    used = _monitoring_names()
    rows = ["| metric | type | labels | meaning | used in |", "|---|---|---|---|---|"]
    for fam in sorted(collect_metric_families(), key=lambda f: f.name):
        exported = f"{fam.name}_total" if fam.type == "counter" else fam.name
        users = sorted(
            {
                u
                for name, files in used.items()
                if name == exported or name.startswith(fam.name + "_") or name == fam.name
                for u in files
            }
        )
        labels = ", ".join(f"`{x}`" for x in _labels(fam))
        rows.append(
            f"| `{exported}` | {fam.type} | {labels} | {_cell(fam.documentation)} "
            f"| {', '.join(f'`{u}`' for u in users)} |"
        )
    return "\n".join([*rows, ""])


def _untemplate(text: str) -> str:
    """An alert annotation without Go templates: labels and values shown as placeholders."""
    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", r"`<\1>`", text)
    return re.sub(r"\{\{\s*\$value[^}]*\}\}", "`$value`", text)


def alerts_reference() -> str:
    """The alerting rules of ``monitoring/alerts``: name, severity, delay, meaning."""
    import yaml  # type: ignore[import-untyped]  # no types-PyYAML among the dependencies

    rows = ["| alert | severity | for | fires when | what to do |", "|---|---|---|---|---|"]
    for path in sorted((MONITORING / "alerts").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                notes = rule.get("annotations", {})
                rows.append(
                    f"| `{rule['alert']}` | {rule.get('labels', {}).get('severity', '')} "
                    f"| {rule.get('for', '')} | {_cell(_untemplate(notes.get('summary', '')))} "
                    f"| {_cell(_untemplate(notes.get('description', '')))} |"
                )
    return "\n".join([*rows, ""])


# -- audit ------------------------------------------------------------------------------------


def event_types() -> list[type[Any]]:
    """The typed service events, one per name the service emits."""
    from greenlang_crypto import events

    found = []
    for name in events.__all__:
        obj = getattr(events, name)
        if inspect.isclass(obj) and issubclass(obj, events.ServiceEvent) and obj.name:
            found.append(obj)
    return sorted(found, key=lambda cls: cls.name)


def audit_actions_in_sources() -> set[str]:
    """Action names written literally where the package records or audits something."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = getattr(func, "attr", None) or getattr(func, "id", None)
            if name in ("audited", "_audited", "key_change", "record"):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.add(arg.value)
                        break
            if name == "AuditEntry":
                for kw in node.keywords:
                    if kw.arg == "action" and isinstance(kw.value, ast.Constant):
                        found.add(str(kw.value.value))
    return found


def audit_reference() -> str:
    """The audit log's record types: service events and admin actions."""
    events_rows = ["| action | meaning | fields |", "|---|---|---|"]
    for cls in event_types():
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
        events_rows.append(
            f"| `{cls.name}` | {_cell(_rst_to_md(_first_paragraph(cls.__doc__)))} "
            f"| {', '.join(f'`{f}`' for f in fields)} |"
        )
    admin_rows = ["| action | meaning |", "|---|---|"]
    admin_rows += [f"| `{name}` | {_cell(text)} |" for name, text in sorted(ADMIN_ACTIONS.items())]
    return "\n".join(
        [
            "### Service events",
            "",
            "Emitted by the service to its observers (the audit log, the metrics). Encryptions",
            "and decryptions are aggregated per flush interval unless the service runs with",
            "`per_operation_events=True`; the others are one record each.",
            "",
            *events_rows,
            "",
            "### Admin actions and the log's own records",
            "",
            "Security-relevant changes write an `intent` record before anything changes (and",
            "fail closed when the sink cannot take it), then `success` or `failure`.",
            "",
            *admin_rows,
            "",
        ]
    )


# -- errors -----------------------------------------------------------------------------------


def error_types() -> list[type[BaseException]]:
    """Every exception class of :mod:`greenlang_crypto.exceptions`, depth first from the root."""
    from greenlang_crypto import exceptions

    classes = [getattr(exceptions, name) for name in exceptions.__all__]
    ordered: list[type[BaseException]] = []

    def visit(cls: type[BaseException]) -> None:
        ordered.append(cls)
        for child in sorted(classes, key=lambda c: c.__name__):
            if cls in child.__bases__ and child not in ordered:
                visit(child)

    visit(exceptions.GreenlangCryptoError)
    return ordered


def _docstring_md(doc: str | None) -> str:
    """A docstring as Markdown: Google sections (``Attributes:``) become bullet lists."""
    out: list[str] = []
    for line in _rst_to_md(inspect.cleandoc(doc or "")).splitlines():
        if re.fullmatch(r"(Attributes|Args):", line.strip()):
            out += ["", f"{line.strip()[:-1]}:", ""]
        elif match := re.match(r"^    (\w+): (.*)$", line):
            out.append(f"- `{match.group(1)}`: {match.group(2)}")
        elif line.startswith("        ") and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return "\n".join(out).strip()


def _caller_advice(cls: type[BaseException], code: int) -> str:
    """What a caller should do with ``cls``, from where it sits in the hierarchy."""
    from greenlang_crypto import exceptions

    if cls is exceptions.GreenlangCryptoError:
        return "**For the caller:** catch it to handle every error the library raises."
    if code == 3:
        return (
            "**For the caller:** a dependency is down or busy, not a bug in the call: the "
            "same call may succeed later (retry with backoff)."
        )
    if issubclass(cls, exceptions.DecryptionError):
        return (
            "**For the caller:** this value cannot be decrypted with this context; do not "
            "retry. Log it without the value, and never tell an end user which check failed."
        )
    if issubclass(cls, ValueError):
        return (
            "**For the caller:** fix the argument or the configuration; the same call fails "
            "the same way again."
        )
    return (
        "**For the caller:** a typed failure; the same call fails again until the cause is fixed."
    )


def errors_reference() -> str:
    """Every exception: its parent, reason, CLI exit code and what it means for the caller."""
    from greenlang_crypto.cli.errors import exit_code

    table = ["| error | parent | `reason` | CLI exit | retry later? |", "|---|---|---|---|---|"]
    sections = []
    for cls in error_types():
        parents = [b.__name__ for b in cls.__bases__]
        code = exit_code(cls.__new__(cls))  # type: ignore[arg-type]
        anchor = cls.__name__.lower()
        table.append(
            f"| [`{cls.__name__}`](#{anchor}) | {', '.join(f'`{p}`' for p in parents)} "
            f"| `{getattr(cls, 'reason', '')}` | {code} | {'yes' if code == 3 else 'no'} |"
        )
        sections += [
            f"### {cls.__name__}",
            "",
            _docstring_md(cls.__doc__),
            "",
            _caller_advice(cls, code),
            "",
        ]
    return "\n".join([*table, "", *sections])


GENERATORS: dict[str, Callable[[], str]] = {
    "cli": cli_reference,
    "config": config_reference,
    "metrics": metrics_reference,
    "alerts": alerts_reference,
    "audit": audit_reference,
    "errors": errors_reference,
}


def main(argv: list[str]) -> int:
    """Prints the named tables (all of them without arguments)."""
    for name in argv or list(GENERATORS):
        sys.stdout.write(GENERATORS[name]() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
