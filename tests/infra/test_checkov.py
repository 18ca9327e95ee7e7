"""checkov over terraform/: zero failed checks, and every suppression has a reason.

checkov lives in its own virtualenv (it pins boto3 and an hcl2 fork that clash
with the test environment): ``scripts/install_infra_tools.sh`` creates it at
``.venv-checkov``; ``CHECKOV_BIN`` overrides the path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO_ROOT / "terraform"

# `#checkov:skip=CKV_AWS_123:reason` (checkov's inline suppression syntax).
SKIP_RE = re.compile(r"checkov:skip=([A-Za-z0-9_]+)(?::(.*))?")
MIN_REASON_LENGTH = 20


def _merge_reports(raw: Any) -> dict[str, Any]:
    """checkov prints one report object, or a list of them (one per framework)."""
    reports = raw if isinstance(raw, list) else [raw]
    merged: dict[str, Any] = {
        "passed_checks": [],
        "failed_checks": [],
        "skipped_checks": [],
        "parsing_errors": [],
        "resource_count": 0,
    }
    for report in reports:
        if report.get("check_type") not in (None, "terraform"):
            continue
        results = report.get("results", {})
        for key in ("passed_checks", "failed_checks", "skipped_checks", "parsing_errors"):
            merged[key].extend(results.get(key, []))
        merged["resource_count"] += report.get("summary", {}).get("resource_count", 0)
    return merged


@pytest.fixture(scope="module")
def checkov_report(require_tool: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    checkov = require_tool("CHECKOV_BIN", ".venv-checkov/bin/checkov")
    home = tmp_path_factory.mktemp("checkov-home")
    env = {
        **os.environ,
        # Offline: no Bridgecrew/Prisma mapping or policy download.
        "BC_SKIP_MAPPING": "TRUE",
        "HOME": str(home),
    }
    result = subprocess.run(
        [
            checkov,
            "-d",
            str(TERRAFORM_DIR),
            "--framework",
            "terraform",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
        cwd=REPO_ROOT,
    )
    # Exit code 1 means "failed checks", which the tests report in detail.
    assert result.returncode in (0, 1), f"checkov crashed ({result.returncode}):\n{result.stderr}"
    return _merge_reports(json.loads(result.stdout))


def test_checkov_scanned_everything(checkov_report: dict[str, Any]) -> None:
    assert checkov_report["parsing_errors"] == []
    assert checkov_report["resource_count"] >= 40
    assert checkov_report["passed_checks"], "checkov evaluated nothing"


def test_checkov_no_failed_checks(checkov_report: dict[str, Any]) -> None:
    failures = [
        f"{f['check_id']} {f['resource']} ({f['file_path']}:{f['file_line_range']}): "
        f"{f['check_name']}"
        for f in checkov_report["failed_checks"]
    ]
    assert failures == []


def test_checkov_evaluated_the_kms_controls(checkov_report: dict[str, Any]) -> None:
    """The KMS and alarm checks really ran on every key and alarm (and passed)."""
    passed = Counter(
        (c["check_id"], c["resource"].split("[")[0]) for c in checkov_report["passed_checks"]
    )
    keys = "module.kms.aws_kms_key.this"
    for check_id in ("CKV_AWS_7", "CKV_AWS_33", "CKV_AWS_227", "CKV2_AWS_64"):
        assert passed[(check_id, keys)] == 7, f"{check_id} did not pass on all 7 keys"
    alarms = sum(n for (check_id, _), n in passed.items() if check_id == "CKV_AWS_319")
    assert alarms == 4, "CKV_AWS_319 (alarm actions enabled) must pass on the 4 KMS alarms"


def _skip_comments() -> list[tuple[Path, int, str, str]]:
    found = []
    for path in sorted(TERRAFORM_DIR.rglob("*.tf")):
        if ".terraform" in path.parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = SKIP_RE.search(line)
            if match:
                found.append((path, number, match.group(1), (match.group(2) or "").strip()))
    return found


def suppression_is_valid(check_id: str, reason: str) -> bool:
    """A suppression names a real check id and says why in a sentence, not a token."""
    return (
        re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check_id) is not None
        and len(reason) >= MIN_REASON_LENGTH
        and len(reason.split()) >= 4
    )


def test_every_suppression_carries_a_reason() -> None:
    bad = [
        f"{path.relative_to(REPO_ROOT)}:{number} {check_id}: reason {reason!r}"
        for path, number, check_id, reason in _skip_comments()
        if not suppression_is_valid(check_id, reason)
    ]
    assert bad == []


def test_every_suppression_is_in_effect(checkov_report: dict[str, Any]) -> None:
    """Each skip comment suppresses a check checkov really ran (no misplaced skips)."""
    skipped = {
        (Path(c["file_abs_path"]).resolve(), c["check_id"])
        for c in checkov_report["skipped_checks"]
    }
    stray = [
        f"{path.relative_to(REPO_ROOT)}:{number} {check_id}"
        for path, number, check_id, _ in _skip_comments()
        if (path.resolve(), check_id) not in skipped
    ]
    assert stray == []


@pytest.mark.parametrize(
    ("line", "acceptable"),
    [
        ("#checkov:skip=CKV_AWS_18", False),
        ("#checkov:skip=CKV_AWS_18:todo", False),
        ("#checkov:skip=CKV_AWS_18:not_needed_for_this_resource_xx", False),
        ("#checkov:skip=AWS_18:Access-log target bucket; logging it to itself would loop.", False),
        (
            "#checkov:skip=CKV_AWS_18:Access-log target bucket; logging it to itself would loop.",
            True,
        ),
    ],
)
def test_reason_rule_rejects_bare_skips(line: str, acceptable: bool) -> None:
    """The reason rule itself: a skip without a reason, or with a token one, is caught."""
    match = SKIP_RE.search(line)
    assert match is not None
    assert suppression_is_valid(match.group(1), (match.group(2) or "").strip()) is acceptable
