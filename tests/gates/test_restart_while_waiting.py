"""Acceptance (issue 11): SIGKILL while ``waiting``, restart, the gate passes: promoted
exactly once. Waiting holds no job, so the restarted controller has nothing to resume
but the status; a repeated ``success`` (the delivery and the resync both seeing it)
does not promote again."""

from __future__ import annotations

import sqlite3

from conftest import REPO, Gated, cli, signals_and_decisions
from support import payloads


def test_sigkill_while_waiting_then_the_gate_passes_once(gated: Gated) -> None:
    gated.connect("--promote-after", "production=github-deployment:Production")
    sha = gated.push("v1")
    waiting = gated.status_of(sha, "waiting")
    # Waiting holds no job, so no thread and no build slot.
    gated.server.wait_for(lambda: _running_jobs(gated) == 0, timeout=60)

    gated.server.kill()
    gated.server.start()
    assert gated.deployment(sha)["status"] == "waiting"  # resumes waiting
    status = payloads.deployment_status(repo=REPO, sha=sha, environment="Production")
    gated.deliver("deployment_status", status)
    assert gated.status_of(sha, "deployed")["version"] == waiting["version"]
    gated.deliver("deployment_status", status)  # the same news again
    gated.server.wait_for(lambda: signals_and_decisions(gated)[0] >= 2, timeout=60)
    gated.server.wait_for(lambda: _running_jobs(gated) == 0 and _queued_decisions(gated) == 0, timeout=60)  # fmt: skip

    logs = gated.logs(waiting["id"])
    assert logs.count(f"Promoted {waiting['version']} to current") == 1, logs
    assert _promote_steps(gated, waiting["id"]) == [("done", 1)]
    assert gated.current() == waiting["version"] and gated.says() == "v1"
    listed = cli(gated.server, "deployments", "--project", "demo").stdout
    assert "deployed" in listed


def _query(gated: Gated, sql: str, *args: object) -> list[tuple]:
    db = sqlite3.connect(f"file:{gated.server.data_dir / 'slipway.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _running_jobs(gated: Gated) -> int:
    return int(_query(gated, "SELECT count(*) FROM jobs WHERE status = 'running' AND kind != 'route'")[0][0])  # fmt: skip


def _queued_decisions(gated: Gated) -> int:
    sql = "SELECT count(*) FROM jobs WHERE kind = 'promote' AND status = 'queued' AND payload NOT LIKE '%timeout%'"  # fmt: skip
    return int(_query(gated, sql)[0][0])


def _promote_steps(gated: Gated, deployment_id: str) -> list[tuple]:
    sql = "SELECT status, attempts FROM deployment_steps WHERE deployment_id = ? AND name = 'promote'"  # fmt: skip
    return _query(gated, sql, deployment_id)
