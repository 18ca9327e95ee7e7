"""The fault campaign under pytest: writers, an operator and a nemesis, then the checker.

Two minutes of faults by default (``GLC_CAMPAIGN_SECONDS``; ``make faults`` runs fifteen), on a
seed drawn at random unless ``GLC_CAMPAIGN_SEED`` is set; the seed is printed first, and a
failure prints the whole schedule and timeline, so any run can be replayed. The campaign runs
in a process of its own (it SIGSTOPs, SIGKILLs and restarts what it started; none of that
belongs in the test process) and leaves its report in ``report.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.campaign.campaign import FAULT_KINDS, faketime_library, render
from tests.pgcluster import pgbin

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_campaign(tmp_path: Path) -> None:
    if pgbin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (scripts/setup.sh installs it)")
        pytest.skip("PostgreSQL is not installed")
    seconds = float(os.environ.get("GLC_CAMPAIGN_SECONDS") or 120)
    out = tmp_path / "campaign"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.campaign.campaign", "--out", str(out)], cwd=REPO
    )
    try:
        # Set-up, healing and the checker on top of the fault phase; a hang must still end.
        proc.wait(seconds + 600)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the campaign then stops its processes and its private cluster.
        proc.terminate()
        try:
            proc.wait(180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pytest.fail(f"the campaign did not finish within {seconds + 600:g} s; see above")
    report_file = out / "report.json"
    assert report_file.exists(), f"the campaign crashed (exit {proc.returncode}); see above"
    report = json.loads(report_file.read_text())
    text = render(report)
    check = report["check"]
    # Something was written and read back, or the checks below would hold vacuously.
    assert check["encrypts_acked"] > 100 and check["decrypted"] > 100, text
    assert check["admin"]["retirements"] + check["admin"]["rotations"] > 0, text
    assert check["lost"] == [], text
    assert check["sealed_after_retirement"] == [], text
    # A campaign that injected nothing cannot fail: every kind must have happened.
    kinds = [k for k in FAULT_KINDS if k != "clock_step" or faketime_library() is not None]
    assert all(report["injected"][k] >= 1 for k in kinds), text
    assert report["ok"], text
    assert proc.returncode == 0, text
