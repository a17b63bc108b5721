"""The benchmarks keep working: each one's smoke mode runs end to end in the suite.

Their figures are not checked here (they belong to the benchmark's own report, on a quiet
machine); what is checked is what the benchmark itself vouches for: every acknowledged
delivery was found durable, and no request failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.waiting import scaled

HERE = Path(__file__).parent


@pytest.mark.node
def test_the_intake_benchmark_runs_and_loses_no_acknowledged_delivery(tmp_path: Path) -> None:
    out = tmp_path / "intake.json"
    result = subprocess.run(
        [sys.executable, str(HERE / "webhook_intake.py"), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=scaled(240),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    slipway = [run for run in report["runs"] if run["server"] == "slipway"]
    assert {run["scenario"] for run in slipway} == {"200/s", "500/s", "max"}
    for run in slipway:
        assert not run.get("problems"), run["problems"]
        assert run["ok_2xx"] > 0
        assert run["durable_added"] >= run["ok_2xx"], run
    assert len(report["targets"]) == 2, "both targets are reported"


def test_the_previews_benchmark_runs_and_scales_previews_to_zero(tmp_path: Path) -> None:
    out = tmp_path / "previews.json"
    result = subprocess.run(
        [sys.executable, str(HERE / "previews.py"), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    # Under load the first previews may go idle before the last start: at least one ran,
    # never more than the cap.
    assert report["previews"] == 4
    assert 1 <= report["peak_workers"] <= report["cap"]
    assert report["preview_workers_after_idle"] == 0
    assert report["warm_p50_ms"] > 0 and report["cold_p50_ms"] > 0
