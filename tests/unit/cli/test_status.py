"""``greenlang-crypto status`` in process (:mod:`greenlang_crypto.cli.status`)."""

from __future__ import annotations

import json

from tests.clirun import RunCli


def test_status_reports_the_provider_and_versions(run_cli: RunCli) -> None:
    code, out, err = run_cli("status")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["provider"] == "local" and doc["provider_ok"] is True
    assert doc["primary_version"] == 1 and doc["min_decryption_version"] == 1
    assert doc["versions"] == [{"version": 1, "state": "primary"}]
    assert set(doc) >= {"cache", "keyring_epoch", "instances", "usage_by_version"}
    assert run_cli("keys", "rotate")[0] == 0
    doc = json.loads(run_cli("status")[1])
    assert doc["primary_version"] == 2
    assert [v["state"] for v in doc["versions"]] == ["active", "primary"]
