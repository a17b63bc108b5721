"""The env var benchmark keeps working: its smoke mode runs end to end in the suite.

Its figures are not checked here (they belong to a quiet machine); what is checked is
that both sides ran every trigger to completion and that the report has both figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_the_envvars_benchmark_runs_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "envvars.json"
    result = subprocess.run(
        [sys.executable, str(HERE / "envvars_trigger.py"), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["sides"]) == {"0", "500"}
    for side in report["sides"].values():
        assert side["runs"] == 20 and side["p50_ms"] > 0 and side["p99_ms"] >= side["p50_ms"]
    assert report["p50_ratio"] > 0
    assert "p50 ratio" in result.stdout
