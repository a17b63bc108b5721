"""Issue 19: the OpenAPI document says what the API does (schemathesis, every check).

A real ``slipway serve`` with a deployed project and a run, and the path parameters pinned
to them (``schemathesis.toml``) so that the operations hit real data. Schemathesis' own CLI
then runs every phase and every check against ``/openapi.json`` with the admin token: 50
examples per operation, deterministic generation (reproducible; a seed is then unused).
Any failure fails the test, with schemathesis' errors and failures first, then its summary.

One worker: schemathesis' workers are threads, and on CPython 3.11.7 two threads in
``ast.parse`` at once (hypothesis describes each filter lambda by parsing its source) can
raise ``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905):
a loaded CI run reported it as a "Runtime Error" in the coverage phase, and a loaded
reproduction hit it 1 time in 3.
"""

from __future__ import annotations

import re
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
    deployment = server.deployments()[0]["id"]
    config = server.data_dir.parent / "schemathesis.toml"
    config.write_text(
        "[parameters]\n"
        'ref = "demo"\n'
        'env = "production"\n'
        f'deployment_id = "{deployment}"\n'
        f'run_id = "{run.json()["id"]}"\n'
        'task_id = "hello"\n'
    )
    result = subprocess.run(
        [
            *SCHEMATHESIS,
            "--config-file",
            str(config),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "50",
            "--generation-deterministic",
            "--workers",
            "1",
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
    report = _findings(result.stdout) + result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout or " passed" in result.stdout, report


def _findings(output: str) -> str:
    """Schemathesis' ERRORS and FAILURES sections, which a plain tail of its output cuts off."""
    sections = re.split(r"^=+ ([A-Z]+) =+$", output, flags=re.MULTILINE)
    found = []
    for name, body in zip(sections[1::2], sections[2::2], strict=True):
        if name in ("ERRORS", "FAILURES"):
            # A traceback line can quote a whole source file (hypothesis' lambda cache key).
            lines = [line[:300] for line in body.strip().splitlines()]
            found.append(f"=== {name} ===\n" + "\n".join(lines)[:8000] + "\n")
    return "".join(found)
