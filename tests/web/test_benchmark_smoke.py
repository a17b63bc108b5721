"""The pages benchmark keeps working: its quick mode runs end to end (figures not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "pages.py"


def test_the_pages_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "pages.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["deployments"] == 100 and report["previews"] == 20
    assert report["project_page"]["p50_ms"] > 0 and "met" in report["target"]
    assert "p50 < 100 ms" in result.stdout
