"""Issue 13 in a real browser: headless Chromium (Debian) driven by npm playwright-core.

The Node script ``browser.mjs`` does what a person does; this test starts it against the
session's real ``slipway serve`` and checks what it saw. Screenshots of the main pages go
to ``tests/web/artifacts/`` (gitignored).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ARTIFACTS, PLAIN_VALUE, SECRET_VALUE, Site
from support import payloads

NODE_DIR = Path(__file__).parents[1] / "node"
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.node


def _require_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        missing.append("npm playwright-core (npm ci --prefix tests/node)")
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        reason = "browser test needs " + ", ".join(missing) + "; bash scripts/test installs them"
        if os.environ.get("CI", "").lower() == "true":
            raise RuntimeError(reason)
        pytest.skip(reason)


def test_sign_in_read_a_log_and_roll_back_in_chromium(site: Site) -> None:
    _require_browser()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        result = subprocess.run(
            [
                "node",
                str(Path(__file__).with_name("browser.mjs")),
                site.server.url,
                site.server.token,
                str(ARTIFACTS),
                SECRET_VALUE,
                PLAIN_VALUE,
            ],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        seen = report["seen"]
        assert report["problems"] == [], report
        assert seen["loginAsksToken"] is True and seen["loginShowsProject"] is False
        assert seen["cookie"] == {"httpOnly": True, "sameSite": "Lax", "isToken": False}
        assert seen["currentBefore"] == site.second["version"]
        assert seen["previewBranch"] == 1
        assert f"Version {site.second['version']} deployed" in seen["log"]
        assert seen["steps"] == 7 and all(d.endswith(" s") for d in seen["stepDurations"])
        assert seen["currentAfter"] == site.first["version"] == site.current()
        assert seen["firstTab"] == "Skip to content"
        assert seen["forgedStatus"] == 403 and seen["forgedChanged"] is False
        assert seen["narrowOverflow"] is False
        assert seen["envvarNames"] == ["API_TOKEN", "LOG_LEVEL"]
        assert seen["previewEnvvars"] == [
            "DB_URL:inherited",
            "DB_URL:override",
            "SHARED_URL:inherited",
        ]
        assert seen["pagesSearched"] >= 8 and seen["valuesFound"] == []
        for name in (
            "login",
            "projects",
            "project",
            "deployment",
            "environment",
            "environment-preview",
        ):
            assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000
    finally:
        site.restore()


def test_a_running_deployment_log_follows_in_chromium(site: Site) -> None:
    _require_browser()
    server = site.server
    server.create_project(
        "slow",
        repo="octo-org/slow",
        clone_url=str(site.repo.path),
        install_command="echo slow install started; sleep 6; echo slow install done $((40+2))",
    )
    sha = site.second["sha"]
    push = payloads.push(repo="octo-org/slow", ref="refs/heads/main", before="0" * 40, after=sha)
    assert server.deliver("push", push).status_code == 202

    def installing() -> str | None:
        deps = server.deployments("slow")
        return deps[0]["id"] if deps and deps[0]["status"] == "installing" else None

    deployment = server.wait_for(installing, timeout=60)
    result = subprocess.run(
        ["node", str(Path(__file__).with_name("follow.mjs")), server.url, server.token, deployment],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["problems"] == [], report
    seen = report["seen"]
    assert seen["activeAtStart"] is True
    assert "slow install done 42" not in seen["logAtStart"]
    assert seen["appendedWithoutReload"] is True
    assert "deployed with 2 detected tasks" in seen["finalLog"]
