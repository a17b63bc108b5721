"""Issue 19: the OpenAPI document says what the API does (schemathesis, every check).

A real ``slipway serve`` with a deployed project, a run and a preview branch, so that the
operations find something to hit; schemathesis' own CLI then runs every phase and every
check against ``/openapi.json`` with the admin token: 50 examples per operation, a fixed
deterministic generation (no seed needed; the run is reproducible), two workers, so it
stays within about 3 minutes on a loaded 2-core machine. Any failure fails the test with the report.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import Flow

pytestmark = [pytest.mark.schemathesis, pytest.mark.timeout(900)]

SCHEMATHESIS = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]


def test_the_api_matches_its_openapi_document(flow: Flow, tmp_path: object) -> None:
    server = flow.server
    flow.deploy_push()
    run = server.trigger("demo", "production", "hello", {"n": 1})
    assert run.status_code == 200, run.text
    result = subprocess.run(
        [
            *SCHEMATHESIS,
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "50",
            "--generation-deterministic",
            "--workers",
            "2",
            "--request-timeout",
            "60",
            "--no-color",
            "--header",
            f"Authorization: Bearer {server.token}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=server.data_dir.parent,
    )
    (server.data_dir.parent / "schemathesis.txt").write_text(result.stdout + result.stderr)
    report = result.stdout[-20000:] + result.stderr[-5000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout or " passed" in result.stdout, report
