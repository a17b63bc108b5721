"""Issue 8: reconcile from desired state — against a real ``slipway serve``.

A commit that lands on a tracked branch of the clone URL with no delivery at all is
deployed by the resync (``SLIPWAY_RESYNC_INTERVAL=1``); so is a staging branch; a delivery
that arrives late, or races the resync, never deploys the commit a second time.

The clone URL is a bare repository the test pushes into, as GitHub would hold it (a
non-bare repository's HEAD is whatever is checked out, not a default branch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Flow
from support import payloads
from support.repos import TaskRepo, git
from support.server import Server

pytestmark = pytest.mark.node


@pytest.fixture
def reconciling(tmp_path: Path) -> Iterator[Server]:
    srv = Server(
        tmp_path / "data",
        extra_env={"SLIPWAY_RESYNC_INTERVAL": "1", "SLIPWAY_RESYNC_BRANCHES": "true"},
    )
    try:
        yield srv.start()
    finally:
        srv.close()


class Remote:
    """A bare repository (the clone URL) that a working repository pushes to."""

    def __init__(self, work: TaskRepo, path: Path) -> None:
        self.work = work
        self.path = path
        git(work.path, "clone", "-q", "--bare", str(work.path), str(path))

    def push(self, branch: str = "main", sha: str | None = None) -> str:
        sha = sha or self.work.head()
        git(self.work.path, "push", "-q", "--force", str(self.path), f"{sha}:refs/heads/{branch}")
        return sha


def deliver_push(server: Server, sha: str, *, branch: str, delivery: str) -> None:
    body = payloads.push(repo=REPO, ref=f"refs/heads/{branch}", before="0" * 40, after=sha)
    response = server.deliver("push", body, delivery=delivery)
    assert response.status_code == 202, response.text


def of(server: Server, sha: str, env: str) -> list[dict[str, Any]]:
    return [d for d in server.deployments() if d["sha"] == sha and d["environment"] == env]


def routed(server: Server, delivery: str) -> bool:
    """The delivery was routed: it made a deployment, or an event says why it did not."""
    return any(d["delivery"] == delivery for d in server.deployments()) or any(
        e["delivery"] == delivery for e in server.ok("GET", "/api/v1/projects/demo/events")
    )


def test_commits_without_deliveries_deploy_and_late_deliveries_add_nothing(
    reconciling: Server, task_repo: TaskRepo, tmp_path: Path
) -> None:
    server = reconciling
    flow = Flow(server, task_repo)
    remote = Remote(task_repo, tmp_path / "remote.git")
    server.create_project("demo", repo=REPO, clone_url=str(remote.path), staging_branch="staging")

    # The head the project starts from, found by asking the remote's HEAD.
    first = task_repo.head()
    initial = flow.deployed(first)
    assert (initial["source"], initial["delivery"], initial["ref"]) == (
        "resync",
        None,
        "refs/heads/main",
    )

    # A push GitHub never told us about.
    second = remote.push("main", task_repo.set_message("hello v2"))
    deployed = flow.deployed(second)
    assert deployed["source"] == "resync"
    assert flow.run()["output"]["message"] == "hello v2"

    # The staging branch appears at the source: staging deploys it.
    remote.push("staging", second)
    staged = flow.deployed(second, env="staging")
    assert staged["ref"] == "refs/heads/staging"
    assert flow.run(env="staging")["output"]["message"] == "hello v2"

    # The deliveries arrive late: routed, and nothing is deployed twice.
    deliver_push(server, second, branch="main", delivery="late-main")
    deliver_push(server, second, branch="staging", delivery="late-staging")
    server.wait_for(lambda: routed(server, "late-main") and routed(server, "late-staging"))
    assert [d["id"] for d in of(server, second, "production")] == [deployed["id"]]
    assert [d["id"] for d in of(server, second, "staging")] == [staged["id"]]
    skipped = [
        e["message"]
        for e in server.ok("GET", "/api/v1/projects/demo/events")
        if e["delivery"] in ("late-main", "late-staging")
    ]
    assert len(skipped) == 2 and all("once per environment" in m for m in skipped)
    assert len(of(server, first, "production")) == 1


def test_a_delivery_racing_the_resync_deploys_its_commit_once(
    reconciling: Server, task_repo: TaskRepo, tmp_path: Path
) -> None:
    server = reconciling
    flow = Flow(server, task_repo)
    remote = Remote(task_repo, tmp_path / "remote.git")
    server.create_project("demo", repo=REPO, clone_url=str(remote.path), staging_branch="staging")
    flow.deployed(task_repo.head())

    sha = remote.push("main", task_repo.set_message("raced"))
    deliver_push(server, sha, branch="main", delivery="racing")
    server.wait_for(lambda: routed(server, "racing"))
    (dep,) = of(server, sha, "production")
    assert server.wait_deployment(dep["id"])["status"] == "deployed"

    # A staging commit the resync must find proves a later pass ran over main too.
    staging = remote.push("staging", task_repo.set_message("staging only"))
    flow.deployed(staging, env="staging")
    assert len(of(server, sha, "production")) == 1
    assert flow.run()["output"]["message"] == "raced"
