"""``greenlang-crypto keys`` in process (:mod:`greenlang_crypto.cli.keys`).

``keys status`` and ``keys retire --force`` against a live instance in another process are in
``tests/integration/cli/test_keys.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.clirun import RunCli


def test_list_rotate_and_retire(run_cli: RunCli) -> None:
    code, out, _ = run_cli("keys", "list", "--json")
    assert code == 0
    assert [(v["version"], v["state"]) for v in json.loads(out)] == [(1, "primary")]
    code, out, err = run_cli("keys", "rotate")
    assert code == 0, err
    assert out.startswith("rotated: v1 -> v2")
    code, out, _ = run_cli("keys", "list")
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("v1") and "active" in lines[0]
    assert lines[1].startswith("v2") and "primary" in lines[1]
    code, out, err = run_cli("keys", "retire", "--below", "2")
    assert code == 0, err
    assert "minimum decryption version is now 2" in out


def test_rewrap_moves_data_keys_to_the_primary(run_cli: RunCli, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"value")
    ctx = ["--tenant", "t", "--data-class", "d"]
    code, _, err = run_cli("encrypt", *ctx, "-i", str(src), "-o", str(tmp_path / "in.glc"))
    assert code == 0, err
    assert run_cli("keys", "rotate")[0] == 0
    code, out, err = run_cli("keys", "rewrap")
    assert code == 0, err
    assert out.startswith("rewrapped 1 stored DEK(s) under ")


def test_key_changes_are_audited(run_cli: RunCli) -> None:
    assert run_cli("keys", "rotate")[0] == 0
    code, out, err = run_cli("audit", "tail", "-n", "10")
    assert code == 0, err
    assert "key_rotate" in out


def test_branch_commands_need_a_target_and_a_confirmation(
    run_cli: RunCli, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli("keys", "branch-rotate")
    assert exc.value.code == 2
    assert "one of the arguments --scope --tenant is required" in capsys.readouterr().err
    code, _, err = run_cli("keys", "branch-delete", "--tenant", "acme")
    assert code == 2 and "--yes" in err


def test_keys_erase_needs_a_tenant_and_a_confirmation_and_reports(
    run_cli: RunCli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli("keys", "erase")
    assert exc.value.code == 2 and "--tenant" in capsys.readouterr().err
    src = tmp_path / "in.txt"
    src.write_bytes(b"value")
    sealed = tmp_path / "in.glc"
    ctx = ["--tenant", "acme", "--data-class", "d"]
    assert run_cli("encrypt", *ctx, "-i", str(src), "-o", str(sealed))[0] == 0
    code, _, err = run_cli("keys", "erase", "--tenant", "acme")
    assert code == 2 and "--yes" in err
    assert run_cli("decrypt", *ctx, "-i", str(sealed), "-o", str(tmp_path / "back"))[0] == 0
    code, out, err = run_cli("keys", "erase", "--tenant", "acme", "--yes")
    assert code == 0, err
    assert out.startswith("tenant acme erased: 1 stored DEK(s) and 0 branch key(s) destroyed")
    code, _, err = run_cli("decrypt", *ctx, "-i", str(sealed), "-o", str(tmp_path / "gone"))
    assert code != 0 and "erased" in err and "acme" not in err
    code, out, err = run_cli("keys", "erase", "--tenant", "acme", "--yes", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["completed"] and report["stored_deks_destroyed"] == 0
    code, out, _ = run_cli("audit", "tail", "-n", "30")
    assert '"action": "tenant_erase"' in out and "acme" not in out


def test_status_shows_the_rotation_policy_its_due_dates_and_the_autopilots_last_step(
    run_cli: RunCli, initialized: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run_cli("keys", "status")
    assert code == 0 and "rotation policy" not in out and "autopilot" not in out
    monkeypatch.setenv("GLC_ROTATION_PERIOD_SECONDS", str(365 * 86400))
    monkeypatch.setenv("GLC_RETIRE_AFTER_SECONDS", "604800")
    code, out, _ = run_cli("keys", "status")
    assert code == 0
    assert "rotation_period: 365 days" in out and "retire_after: 7 days" in out
    assert "reencrypt_within: off" in out
    assert "next: rotate v1 at " in out and "OVERDUE" not in out
    # The autopilot's outcome, recorded by whatever process ran it, is shown with its reasons.
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.service import EncryptionService

    with EncryptionService(EncryptionServiceConfig(data_dir=initialized)) as svc:
        svc.record_autopilot_step("blocked", ["app.users.email: 2 row(s) quarantined"], "h:7")
    code, out, _ = run_cli("keys", "status")
    assert "autopilot: last step blocked at " in out and "by h:7" in out
    assert "  app.users.email: 2 row(s) quarantined" in out
    code, out, _ = run_cli("keys", "status", "--json")
    doc = json.loads(out)
    assert doc["rotation_policy"]["policy"]["rotation_period_seconds"] == 365 * 86400
    assert doc["autopilot"]["reasons"] == ["app.users.email: 2 row(s) quarantined"]
    # Past the period the date is marked overdue.
    monkeypatch.setenv("GLC_ROTATION_PERIOD_SECONDS", "0.001")
    time.sleep(0.01)
    code, out, _ = run_cli("keys", "status")
    assert "next: rotate v1 at " in out and "(OVERDUE)" in out
