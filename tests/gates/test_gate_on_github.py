"""Issue 11, "visible": a waiting deployment's check run on GitHub says what it waits for.

A real ``slipway serve`` reporting to the fake GitHub: a gated push's check run
``Slipway (production)`` is ``in_progress`` naming the gate, since when and until when,
and its GitHub Deployment's status says it waits for the gate; the app's
``deployment_status`` ``success`` promotes it and the check run completes ``success``.
"""

from __future__ import annotations

from typing import Any

from conftest import REPO, Gated, cli
from support import payloads
from support.fake_github import FakeGitHub


def check_run(fake: FakeGitHub, sha: str) -> dict[str, Any] | None:
    with fake._lock:
        runs = [dict(r) for r in fake.check_runs.values() if r["head_sha"] == sha]
    return next((r for r in runs if r["name"] == "Slipway (production)"), None)


def slipway_statuses(fake: FakeGitHub, sha: str) -> list[dict[str, Any]]:
    with fake._lock:
        ours = [
            d["id"]
            for d in fake.deployments.values()
            if d["sha"] == sha and d["environment"] == "slipway/production"
        ]
        return [dict(s) for gh_id in ours for s in fake.deployment_statuses.get(gh_id, [])]


def test_a_waiting_deployment_shows_its_gate_on_github(
    gated: Gated, fake_github: FakeGitHub
) -> None:
    gated.connect()
    cli(gated.server, "projects", "update", "demo", "--promote-after", "prod=github-deployment:Production", "--promotion-timeout", "1h")  # fmt: skip
    sha = gated.push("v1")
    waiting = gated.status_of(sha, "waiting")

    def waiting_shown() -> dict[str, Any] | None:
        run = check_run(fake_github, sha)
        title = run["output"]["title"] if run else ""
        return run if "github-deployment:Production" in title else None

    run = gated.server.wait_for(waiting_shown, timeout=60)
    assert run["status"] == "in_progress" and not run.get("conclusion")
    summary = run["output"]["summary"]
    assert "GitHub environment Production" in summary
    assert "Since: " in summary and "Until: " in summary, summary
    assert waiting["version"] in summary
    last = slipway_statuses(fake_github, sha)[-1]
    assert last["state"] == "in_progress"
    assert last["description"].startswith("waiting for promotion gate github-deployment:Production")

    gated.deliver(
        "deployment_status",
        payloads.deployment_status(repo=REPO, sha=sha, environment="Production", state="success"),
    )
    gated.status_of(sha, "deployed")

    def completed() -> dict[str, Any] | None:
        run = check_run(fake_github, sha)
        return run if run and run["status"] == "completed" else None

    run = gated.server.wait_for(completed, timeout=60)
    assert run["conclusion"] == "success"
    assert gated.server.wait_for(
        lambda: slipway_statuses(fake_github, sha)[-1]["state"] == "success", timeout=60
    )
