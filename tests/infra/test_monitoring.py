"""Prometheus alert rules, their promtool unit tests, and the Grafana dashboard.

promtool comes from the Debian ``prometheus`` package
(``scripts/install_infra_tools.sh``); ``PROMTOOL_BIN`` overrides the path.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING = REPO_ROOT / "monitoring"
RULES_FILE = MONITORING / "alerts" / "greenlang-crypto.rules.yml"
UNIT_TESTS = sorted((MONITORING / "alerts" / "tests").glob("*.test.yml"))
DASHBOARD_FILE = MONITORING / "dashboards" / "greenlang-crypto.json"

# The metrics greenlang_crypto.metrics exports, with their types.
METRICS = {
    "gl_encryption_operations_total": "counter",
    "gl_encryption_duration_seconds": "histogram",
    "gl_encryption_key_cache_hits_total": "counter",
    "gl_encryption_key_cache_misses_total": "counter",
    "gl_encryption_failures_total": "counter",
    "gl_kms_calls_total": "counter",
    "gl_kms_latency_seconds": "histogram",
    "gl_encryption_dek_age_seconds": "gauge",
    "gl_encryption_nonce_budget_used_ratio": "gauge",
    "gl_encryption_key_cache_size": "gauge",
    "gl_encryption_reencryption_rows_total": "counter",
    "gl_encryption_reencryption_remaining_rows": "gauge",
    "gl_encryption_audit_sink_up": "gauge",
    "gl_encryption_decrypt_failures_total": "counter",
    "gl_encryption_branch_key_unwraps_total": "counter",
    "gl_encryption_branch_key_created_total": "counter",
    "gl_encryption_branch_key_derivations_total": "counter",
    "gl_encryption_branch_keys_cached": "gauge",
    "gl_encryption_key_cache_redis_total": "counter",
    "gl_encryption_key_age_seconds": "gauge",
    "gl_encryption_column_rows": "gauge",
    "gl_encryption_autopilot_next_action_seconds": "gauge",
    "gl_encryption_autopilot_behind_schedule": "gauge",
    "gl_encryption_autopilot_last_run_status": "gauge",
    "gl_encryption_autopilot_last_run_timestamp_seconds": "gauge",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Required alerts: name -> fragments its expression must contain.
REQUIRED_ALERTS = {
    "GreenlangCryptoHighFailureRate": ('gl_encryption_operations_total{status="failure"}',),
    "GreenlangCryptoKeyCacheHitRatioLow": (
        "gl_encryption_key_cache_hits_total",
        "gl_encryption_key_cache_misses_total",
        "< 0.95",
    ),
    "GreenlangCryptoKmsLatencyHigh": ("histogram_quantile", "gl_kms_latency_seconds_bucket"),
    "GreenlangCryptoKmsErrors": ("gl_kms_calls_total",),
    "GreenlangCryptoNonceBudgetHigh": ("gl_encryption_nonce_budget_used_ratio", "> 0.8"),
    "GreenlangCryptoAuditSinkDown": ("gl_encryption_audit_sink_up", "== 0"),
    "GreenlangCryptoBranchKeyUnwrapsHigh": ("gl_encryption_branch_key_unwraps_total", "> 5"),
    "GreenlangCryptoRedisKeyCacheErrors": ('gl_encryption_key_cache_redis_total{outcome="error"}',),
    "GreenlangCryptoRedisKeyCacheForged": (
        'gl_encryption_key_cache_redis_total{outcome="forged"}',
        "> 0",
    ),
    "GreenlangCryptoRotationOverdue": (
        'gl_encryption_autopilot_next_action_seconds{action="rotate"}',
        "> 3600",
    ),
    "GreenlangCryptoReencryptionBehind": (
        'gl_encryption_autopilot_next_action_seconds{action="reencrypt"}',
        "> 0",
    ),
    "GreenlangCryptoAutopilotBlocked": ("gl_encryption_autopilot_last_run_status",),
}

# Dashboard topics: a panel whose title matches must query these metrics.
REQUIRED_PANELS = {
    r"operation rate": ("gl_encryption_operations_total",),
    r"latency p50 / p99": (
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
        "gl_encryption_duration_seconds_bucket",
    ),
    r"cache hit ratio": (
        "gl_encryption_key_cache_hits_total",
        "gl_encryption_key_cache_misses_total",
    ),
    r"kms calls": ("gl_kms_calls_total",),
    r"kms latency": ("gl_kms_latency_seconds_bucket",),
    r"failures by type": ("gl_encryption_failures_total",),
    r"nonce budget": ("gl_encryption_nonce_budget_used_ratio",),
    r"rotation progress": ("gl_encryption_reencryption_remaining_rows",),
    r"audit sink": ("gl_encryption_audit_sink_up",),
    r"branch key unwraps": (
        "gl_encryption_branch_key_unwraps_total",
        "gl_encryption_branch_key_created_total",
    ),
    r"branch key derivations": (
        "gl_encryption_branch_key_derivations_total",
        "gl_encryption_branch_keys_cached",
    ),
    r"redis key cache": ("gl_encryption_key_cache_redis_total",),
    r"primary key age": ("gl_encryption_key_age_seconds",),
    r"rows per key version": ("gl_encryption_column_rows",),
    r"autopilot next action": ("gl_encryption_autopilot_next_action_seconds",),
}

# Grafana's built-in interval variables, replaced by a fixed duration for promtool.
GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


@pytest.fixture(scope="module")
def promtool(require_tool: Any) -> str:
    return require_tool("PROMTOOL_BIN", "promtool")


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(gl_[a-z0-9_]+)", expr))


def _known_metric(name: str) -> bool:
    if name in METRICS:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and METRICS.get(base) == "histogram":
            return True
    return False


# ---------------------------------------------------------------------------
# Alert rules
# ---------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    result = _run([promtool, "check", "rules", str(RULES_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests(promtool: str) -> None:
    assert UNIT_TESTS, "no promtool unit tests in monitoring/alerts/tests"
    result = _run([promtool, "test", "rules", *map(str, UNIT_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_required_alerts_exist(rules: list[dict[str, Any]]) -> None:
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    for name, fragments in REQUIRED_ALERTS.items():
        assert name in alerts, f"missing alert {name}"
        expr = " ".join(alerts[name]["expr"].split())
        for fragment in fragments:
            assert fragment in expr, f"{name}: expression lacks {fragment!r}"


def test_alerts_are_labelled_and_annotated(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        if "alert" not in rule:
            continue
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), rule["alert"]
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]


def test_rules_use_only_exported_metrics(rules: list[dict[str, Any]]) -> None:
    unknown = {
        name for rule in rules for name in _metric_names(rule["expr"]) if not _known_metric(name)
    }
    assert unknown == set()


def test_every_alert_has_firing_and_quiet_unit_tests(rules: list[dict[str, Any]]) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert "../greenlang-crypto.rules.yml" in document.get("rule_files", []), path.name
        for test in document.get("tests", []):
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    assert alerts - fires == set(), "alerts without a test where they fire"
    assert alerts - quiet == set(), "alerts without a test where they stay quiet"


def test_promtool_unit_tests_catch_a_wrong_threshold(promtool: str, tmp_path: Path) -> None:
    """The unit tests are strict: loosening one threshold makes them fail."""
    text = RULES_FILE.read_text(encoding="utf-8")
    loosened = text.replace(
        "gl_encryption_nonce_budget_used_ratio > 0.8",
        "gl_encryption_nonce_budget_used_ratio > 0.95",
    )
    assert loosened != text
    (tmp_path / "greenlang-crypto.rules.yml").write_text(loosened, encoding="utf-8")
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    target = tests_dir / "nonce-budget.test.yml"
    target.write_text(
        (MONITORING / "alerts" / "tests" / "nonce-budget.test.yml").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    result = _run([promtool, "test", "rules", str(target)])
    assert result.returncode != 0, result.stdout


# ---------------------------------------------------------------------------
# Dashboard
# ---------------------------------------------------------------------------


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _panels(dashboard) if p.get("type") != "row"]


def _template_variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def to_promql(expr: str, variables: set[str]) -> str:
    """Replace Grafana variables so the expression can be checked by promtool.

    Interval variables become durations; dashboard variables (used only inside
    ``=~"..."`` matchers) become ``.+``. Anything else is left in place and
    makes the check fail.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        if name in variables:
            return ".+"
        return match.group(0)

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def test_dashboard_metadata(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "greenlang-crypto"
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None, (
        "exported dashboards must not pin an id"
    )
    variables = _template_variables(dashboard)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"


def test_dashboard_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _query_panels(dashboard):
        name = panel["title"]
        assert panel.get("description"), f"{name}: no description"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
        targets = panel.get("targets", [])
        assert targets, f"{name}: no queries"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{name}: duplicate refId"
        for target in targets:
            assert target["expr"].strip(), f"{name}: empty query"
            assert target["datasource"] == panel["datasource"], name
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), f"{name}: no unit"


def test_dashboard_layout_does_not_overlap(dashboard: dict[str, Any]) -> None:
    occupied: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]


def test_dashboard_covers_every_topic(dashboard: dict[str, Any]) -> None:
    panels = _query_panels(dashboard)
    for pattern, fragments in REQUIRED_PANELS.items():
        matching = [p for p in panels if re.search(pattern, p["title"], flags=re.I)]
        assert matching, f"no panel titled like {pattern!r}"
        exprs = " ".join(t["expr"] for p in matching for t in p["targets"])
        for fragment in fragments:
            assert fragment in exprs, f"panels {pattern!r} do not query {fragment}"


def test_dashboard_uses_every_metric_and_only_those(dashboard: dict[str, Any]) -> None:
    used = {
        n for p in _query_panels(dashboard) for t in p["targets"] for n in _metric_names(t["expr"])
    }
    assert {n for n in used if not _known_metric(n)} == set()
    missing = {
        m
        for m, kind in METRICS.items()
        if not any(u == m or (kind == "histogram" and u.startswith(m)) for u in used)
    }
    assert missing == set()


def test_dashboard_queries_filter_by_job_and_instance(dashboard: dict[str, Any]) -> None:
    for panel in _query_panels(dashboard):
        for target in panel["targets"]:
            for selector in re.findall(r"gl_[a-z0-9_]+\{([^}]*)\}", target["expr"]):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, (
                    f"{panel['title']}: selector {{{selector}}} ignores the dashboard variables"
                )


def _dashboard_rule_file(dashboard: dict[str, Any], path: Path) -> int:
    variables = set(_template_variables(dashboard))
    rules = []
    for panel in _query_panels(dashboard):
        for target in panel["targets"]:
            expr = to_promql(target["expr"], variables)
            assert "$" not in expr, f"{panel['title']}: unresolved variable in {expr}"
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr}
            )
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    return len(rules)


def test_dashboard_promql_is_valid(
    promtool: str, dashboard: dict[str, Any], tmp_path: Path
) -> None:
    rules_path = tmp_path / "dashboard.rules.yml"
    count = _dashboard_rule_file(dashboard, rules_path)
    assert count >= 20
    result = _run([promtool, "check", "rules", str(rules_path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_dashboard_promql_check_rejects_bad_queries(
    promtool: str, dashboard: dict[str, Any], tmp_path: Path
) -> None:
    """The same harness fails on a broken panel query."""
    broken = json.loads(json.dumps(dashboard))
    _query_panels(broken)[0]["targets"][0]["expr"] = (
        "sum(rate(gl_kms_calls_total[$__rate_interval])"
    )
    rules_path = tmp_path / "broken.rules.yml"
    _dashboard_rule_file(broken, rules_path)
    result = _run([promtool, "check", "rules", str(rules_path)])
    assert result.returncode != 0


def test_to_promql_substitution() -> None:
    expr = 'rate(gl_kms_calls_total{job=~"$job", instance=~"${instance}"}[$__rate_interval])'
    assert to_promql(expr, {"job", "instance"}) == (
        'rate(gl_kms_calls_total{job=~".+", instance=~".+"}[5m])'
    )
    assert "$unknown" in to_promql('up{job=~"$unknown"}', {"job"})
