"""Prometheus metrics: exact names and labels, values read at scrape time, promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from greenlang_crypto.audit import AuditLog, SqliteAuditSink
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import DecryptionError, GreenlangCryptoError
from greenlang_crypto.metrics import (
    MAX_DATA_CLASSES,
    AutopilotState,
    EncryptionMetrics,
    ReencryptionProgress,
    autopilot_state,
    reencryption_progress,
    register_metrics,
)
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from tests.observed import observed_stub

CTX = {"tenant_id": "tenant-must-not-be-a-label", "data_class": "pii"}
Wired = tuple[EncryptionService, EncryptionMetrics, AuditLog, CollectorRegistry]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
EXPECTED = {
    "gl_encryption_operations_total",
    "gl_encryption_duration_seconds",
    "gl_encryption_key_cache_hits_total",
    "gl_encryption_key_cache_misses_total",
    "gl_encryption_key_cache_size",
    "gl_encryption_failures_total",
    "gl_encryption_decrypt_failures_total",
    "gl_kms_calls_total",
    "gl_kms_latency_seconds",
    "gl_encryption_dek_age_seconds",
    "gl_encryption_nonce_budget_used_ratio",
    "gl_encryption_reencryption_rows_total",
    "gl_encryption_reencryption_remaining_rows",
    "gl_encryption_audit_sink_up",
}


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[Wired]:
    LocalKeyProvider(tmp_path).create_master_key()
    metrics = EncryptionMetrics(progress=ReencryptionProgress())
    audit = AuditLog(SqliteAuditSink(tmp_path / "audit.db"), start_thread=False)
    svc = EncryptionService(EncryptionServiceConfig(data_dir=tmp_path), observers=[audit, metrics])
    audit.attach(svc)
    registry = CollectorRegistry(auto_describe=False)
    register_metrics(svc, registry=registry, audit=audit, metrics=metrics)
    yield svc, metrics, audit, registry
    audit.close()
    svc.close()


def _samples(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _v(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_exposition_names_labels_and_values(wired: Wired) -> None:
    svc, metrics, _audit, registry = wired
    for _ in range(20):
        env = svc.encrypt(b"x" * 64, CTX)
        svc.decrypt(env, CTX)
    with pytest.raises(DecryptionError):
        svc.decrypt(env, {**CTX, "data_class": "other"})
    with pytest.raises(DecryptionError):
        svc.decrypt(b"\x01\x02", CTX)
    metrics._progress.add("success", 7)
    metrics._progress.add("failure", 1)
    metrics._progress.set_remaining(42)
    text = generate_latest(registry).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    # The parser strips _total from counter family names; compare exposition lines instead.
    for name in EXPECTED:
        assert f"# TYPE {name} " in text, name
    assert names
    assert "tenant-must-not-be-a-label" not in text and "tenant_id" not in text
    s = _samples(registry)
    assert (
        _v(
            s,
            "gl_encryption_operations_total",
            operation="encrypt",
            status="success",
            data_class="pii",
        )
        == 20
    )
    assert (
        _v(
            s,
            "gl_encryption_operations_total",
            operation="decrypt",
            status="success",
            data_class="pii",
        )
        == 20
    )
    assert (
        _v(
            s,
            "gl_encryption_operations_total",
            operation="decrypt",
            status="failure",
            data_class="other",
        )
        == 1
    )
    assert (
        _v(
            s,
            "gl_encryption_operations_total",
            operation="decrypt",
            status="failure",
            data_class="pii",
        )
        == 1
    )
    assert _v(s, "gl_encryption_failures_total", error_type="DecryptionError") >= 1
    reasons = {k[1] for k in s if k[0] == "gl_encryption_decrypt_failures_total"}
    assert reasons <= {frozenset({("reason", r)}) for r in ("authentication", "malformed")}
    assert _v(s, "gl_encryption_key_cache_hits_total", key_type="encrypt") >= 19
    assert _v(s, "gl_encryption_key_cache_misses_total", key_type="encrypt") >= 1
    assert _v(s, "gl_encryption_key_cache_size", key_type="decrypt") == 1
    assert _v(s, "gl_kms_calls_total", operation="GenerateDataKey", status="success") == 1
    assert _v(s, "gl_kms_latency_seconds_count", operation="GenerateDataKey") == 1
    assert _v(s, "gl_encryption_reencryption_rows_total", status="success") == 7
    assert _v(s, "gl_encryption_reencryption_remaining_rows") == 42
    assert _v(s, "gl_encryption_audit_sink_up") == 1
    assert 0 < _v(s, "gl_encryption_nonce_budget_used_ratio") < 1
    # The one DEK was made during this test: its age is seconds, not a stale or unset value.
    assert 0 <= _v(s, "gl_encryption_dek_age_seconds") < 60
    lat = [k for k in s if k[0] == "gl_encryption_duration_seconds_bucket"]
    assert {dict(k[1])["operation"] for k in lat} == {"encrypt", "decrypt"}


def test_counters_stay_monotonic_across_rotation(wired: Wired) -> None:
    svc, _metrics, _audit, registry = wired
    for _ in range(10):
        svc.encrypt(b"x", CTX)
    before = _samples(registry)
    svc.rotate()
    svc.encrypt(b"x", CTX)
    after = _samples(registry)
    for key, value in before.items():
        if key[0].endswith(("_total", "_count", "_sum", "_bucket")):
            assert after.get(key, 0) >= value, key


def test_kms_observer_callback_and_no_double_counting(wired: Wired) -> None:
    svc, metrics, _audit, registry = wired
    callback = metrics.kms_observer
    callback("GenerateDataKey", "ok", 0.012)
    callback("Decrypt", "unavailable", 2.5)
    svc.encrypt(b"x", CTX)  # a local-provider event: ignored once the callback is in use
    s = _samples(registry)
    assert _v(s, "gl_kms_calls_total", operation="GenerateDataKey", status="success") == 1
    assert _v(s, "gl_kms_calls_total", operation="Decrypt", status="unavailable") == 1
    assert _v(s, "gl_kms_latency_seconds_bucket", operation="GenerateDataKey", le="0.025") == 1
    assert _v(s, "gl_kms_latency_seconds_bucket", operation="Decrypt", le="2.5") == 1
    assert _v(s, "gl_kms_latency_seconds_bucket", operation="Decrypt", le="1.0") == 0


def test_data_class_label_is_bounded(wired: Wired) -> None:
    svc, _metrics, _audit, registry = wired
    for i in range(MAX_DATA_CLASSES + 5):
        svc.encrypt(b"x", {"tenant_id": "t", "data_class": f"class-{i}"})
    s = _samples(registry)
    classes = {dict(k[1])["data_class"] for k in s if k[0] == "gl_encryption_operations_total"}
    assert len(classes) == MAX_DATA_CLASSES + 1 and "other" in classes


def test_failure_counts_without_observer_use_unknown_class(tmp_path: Path) -> None:
    LocalKeyProvider(tmp_path).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=tmp_path))
    registry = CollectorRegistry(auto_describe=False)
    register_metrics(svc, registry=registry)
    env = svc.encrypt(b"x", CTX)
    svc.rotate()
    svc.retire_versions_below(2, delete_stored_deks=True)
    with pytest.raises(GreenlangCryptoError):
        svc.decrypt(env, CTX)
    s = _samples(registry)
    failures = {
        k: v
        for k, v in s.items()
        if k[0] == "gl_encryption_operations_total" and ("status", "failure") in k[1]
    }
    assert failures and all(("data_class", "unknown") in k[1] for k in failures)
    assert ("gl_encryption_audit_sink_up", frozenset()) not in s
    svc.close()


def test_reencryption_progress_is_process_global_and_validated() -> None:
    p = reencryption_progress()
    assert p is reencryption_progress()
    p.reset()
    p.add("success", 3)
    p.set_remaining(5)
    assert p.snapshot() == ({"success": 3}, 5)
    with pytest.raises(ValueError):
        p.add("success", -1)
    p.reset()


def test_package_root_and_progress_do_not_import_prometheus() -> None:
    code = (
        "import sys, greenlang_crypto, greenlang_crypto.service, greenlang_crypto.audit\n"
        "from greenlang_crypto.metrics import reencryption_progress\n"
        "reencryption_progress().add('success', 1)\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client imported'\n"
        "assert 'fastapi' not in sys.modules, 'fastapi imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_promtool_accepts_the_exposition(wired: Wired, tmp_path: Path) -> None:
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (CI is set); run scripts/install_infra_tools.sh")
        pytest.skip("promtool not installed; run scripts/install_infra_tools.sh")
    svc, metrics, _audit, registry = wired
    env = svc.encrypt(b"x", CTX)
    svc.decrypt(env, CTX)
    with pytest.raises(DecryptionError):
        svc.decrypt(env, {**CTX, "data_class": "other"})
    metrics.kms_observer("Decrypt", "ok", 0.01)
    metrics._progress.add("success", 1)
    body = generate_latest(registry)
    res = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


class _SinkSource:
    """An audit log as metrics see it: something that pushes the sink state."""

    def __init__(self, up: bool) -> None:
        self.up = up
        self.listeners: list[Callable[[bool], None]] = []

    def add_sink_listener(self, listener: Callable[[bool], None]) -> None:
        self.listeners.append(listener)
        listener(self.up)

    def push(self, up: bool) -> None:
        self.up = up
        for listener in self.listeners:
            listener(up)


def test_bound_to_the_observer_protocol_alone(tmp_path: Path) -> None:
    stub = observed_stub(tmp_path)
    stub.ops = {("encrypt", "pii"): 7}
    stub.branch = {"unwraps": 2, "created": 1, "derivations": 40, "cached_keys": 1}
    stub.redis = {"hit": 5, "miss": 1}
    metrics = EncryptionMetrics(progress=ReencryptionProgress())
    registry = CollectorRegistry(auto_describe=False)
    register_metrics(stub, registry=registry, metrics=metrics)
    s = _samples(registry)
    assert (
        _v(
            s,
            "gl_encryption_operations_total",
            operation="encrypt",
            status="success",
            data_class="pii",
        )
        == 7
    )
    assert _v(s, "gl_encryption_key_cache_hits_total", key_type="encrypt") == 3
    assert _v(s, "gl_encryption_branch_key_unwraps_total") == 2
    assert _v(s, "gl_encryption_branch_key_derivations_total") == 40
    assert _v(s, "gl_encryption_key_cache_redis_total", outcome="hit") == 5
    assert stub.stats_reads == 1  # one snapshot per scrape


def test_the_sink_gauge_is_the_last_state_the_audit_log_pushed(tmp_path: Path) -> None:
    first, second = _SinkSource(up=False), _SinkSource(up=True)
    metrics = EncryptionMetrics(observed_stub(tmp_path), audit=first)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    assert _v(_samples(registry), "gl_encryption_audit_sink_up") == 0
    first.push(True)
    assert _v(_samples(registry), "gl_encryption_audit_sink_up") == 1
    metrics.bind(observed_stub(tmp_path), audit=first)  # the same log: not followed twice
    assert len(first.listeners) == 1
    metrics.bind(observed_stub(tmp_path), audit=second)
    first.push(False)  # a log no longer bound is ignored
    assert _v(_samples(registry), "gl_encryption_audit_sink_up") == 1
    second.push(False)
    assert _v(_samples(registry), "gl_encryption_audit_sink_up") == 0


def test_key_age_is_the_primary_versions_age_and_resets_on_rotation(tmp_path: Path) -> None:
    LocalKeyProvider(tmp_path).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=tmp_path))
    try:
        now = [svc.primary_key_created_at + 500.0]
        metrics = EncryptionMetrics(svc, progress=ReencryptionProgress(), clock=lambda: now[0])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(metrics)
        assert _v(_samples(registry), "gl_encryption_key_age_seconds") == 500
        svc.rotate()
        now[0] = svc.primary_key_created_at + 3.0
        assert _v(_samples(registry), "gl_encryption_key_age_seconds") == 3
    finally:
        svc.close()


def test_no_key_age_from_a_service_that_does_not_tell_it(tmp_path: Path) -> None:
    registry = CollectorRegistry(auto_describe=False)
    register_metrics(observed_stub(tmp_path), registry=registry, metrics=EncryptionMetrics())
    assert not any(k[0] == "gl_encryption_key_age_seconds" for k in _samples(registry))


def test_autopilot_figures_are_the_last_step_pushed(tmp_path: Path) -> None:
    state = AutopilotState()
    now = [1000.0]
    metrics = EncryptionMetrics(
        observed_stub(tmp_path),
        progress=ReencryptionProgress(),
        autopilot=state,
        clock=lambda: now[0],
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    # No step ran: no autopilot samples (not zeros that read as "all is well").
    assert not any(k[0].startswith("gl_encryption_autopilot") for k in _samples(registry))
    assert not any(k[0] == "gl_encryption_column_rows" for k in _samples(registry))
    state.push(
        "progressing",
        finished_at=990.0,
        rows={
            ("users", "email", "1"): 40,
            ("users", "email", "2"): 60,
            ("users", "email", "none"): 1,
        },
        next_actions={"rotate": 4600.0, "reencrypt": 1600.0, "retire": None},
        behind=0,
    )
    s = _samples(registry)
    assert _v(s, "gl_encryption_column_rows", table="users", column="email", key_version="1") == 40
    assert _v(s, "gl_encryption_column_rows", table="users", column="email", key_version="2") == 60
    assert (
        _v(s, "gl_encryption_column_rows", table="users", column="email", key_version="none") == 1
    )
    assert _v(s, "gl_encryption_autopilot_next_action_seconds", action="rotate") == 3600
    assert _v(s, "gl_encryption_autopilot_next_action_seconds", action="reencrypt") == 600
    assert (
        "gl_encryption_autopilot_next_action_seconds",
        frozenset({("action", "retire")}),
    ) not in s
    assert _v(s, "gl_encryption_autopilot_last_run_status", status="progressing") == 1
    assert _v(s, "gl_encryption_autopilot_last_run_status", status="done") == 0
    assert _v(s, "gl_encryption_autopilot_last_run_timestamp_seconds") == 990
    assert _v(s, "gl_encryption_autopilot_behind_schedule") == 0
    # The countdown runs at scrape time and goes negative once the deadline passed.
    now[0] = 2000.0
    s = _samples(registry)
    assert _v(s, "gl_encryption_autopilot_next_action_seconds", action="reencrypt") == -400
    # A failed step learned nothing new: the figures stay, the status changes.
    state.push("failed", finished_at=1995.0)
    s = _samples(registry)
    assert _v(s, "gl_encryption_autopilot_last_run_status", status="failed") == 1
    assert _v(s, "gl_encryption_autopilot_last_run_status", status="progressing") == 0
    assert _v(s, "gl_encryption_column_rows", table="users", column="email", key_version="2") == 60
    assert _v(s, "gl_encryption_autopilot_next_action_seconds", action="rotate") == 2600
    state.push("done", finished_at=1999.0, rows={}, next_actions={}, behind=2)
    s = _samples(registry)
    assert not any(k[0] == "gl_encryption_column_rows" for k in s)
    assert _v(s, "gl_encryption_autopilot_behind_schedule") == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"status": "sleeping"},
        {"status": "done", "behind": -1},
        {"status": "done", "rows": {("t", "c", "1"): -5}},
    ],
)
def test_autopilot_state_refuses_bad_figures_and_keeps_the_last(bad: dict[str, Any]) -> None:
    state = AutopilotState()
    state.push("done", finished_at=1.0, behind=0)
    status = bad.pop("status")
    with pytest.raises(ValueError):
        state.push(status, finished_at=2.0, **bad)
    last = state.snapshot()
    assert last is not None and (last.status, last.finished_at) == ("done", 1.0)


def test_the_autopilot_state_is_process_global() -> None:
    assert autopilot_state() is autopilot_state()
    assert isinstance(autopilot_state(), AutopilotState)
