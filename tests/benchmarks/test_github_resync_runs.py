"""The GitHub resync benchmark keeps working: its smoke mode runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.waiting import scaled

HERE = Path(__file__).parent


def test_the_github_resync_benchmark_runs_and_unchanged_repositories_cost_304s(
    tmp_path: Path,
) -> None:
    out = tmp_path / "github_resync.json"
    result = subprocess.run(
        [sys.executable, str(HERE / "github_resync.py"), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=scaled(240),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["spec_errors"] == []
    (unchanged,) = report["unchanged"]
    assert unchanged["requests"] == unchanged["not_modified"] == 2 * report["repos"]
    assert report["cold"]["deployments_requested"] == report["repos"]
