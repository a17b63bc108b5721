"""Acceptance (issue 11): ``check-run:NAME``, ``kubernetes:NAMESPACE/DEPLOYMENT`` and
``manual`` gates, each against a real ``slipway serve``.

The check run comes as signed deliveries, then only in GitHub's state (a lost delivery,
read by the resync); the Deployment is served by a Kubernetes API
(:mod:`support.fake_kubernetes`) that the official client reaches through ``KUBECONFIG``,
polled by the resync.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, Gated, app_env, cli, signals_and_decisions
from support import payloads
from support.fake_github import FakeGitHub
from support.fake_kubernetes import FakeKubernetes, deployment
from support.repos import TaskRepo
from support.server import Server


@pytest.fixture
def cluster() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        yield fake


@pytest.fixture
def gated_k8s(
    tmp_path: Path, fake_github: FakeGitHub, cluster: FakeKubernetes, task_repo: TaskRepo
) -> Iterator[Gated]:
    payloads.require_node_modules()
    env = {**app_env(fake_github, tmp_path), "KUBECONFIG": str(cluster.kubeconfig(tmp_path / "kubeconfig"))}  # fmt: skip
    server = Server(tmp_path / "data", extra_env=env)
    try:
        yield Gated(server.start(), task_repo)
    finally:
        server.close()


def check_run(sha: str, name: str, *, action: str = "completed", conclusion: str | None = "success") -> dict:  # fmt: skip
    return payloads.check_run(repo=REPO, sha=sha, name=name, action=action, conclusion=conclusion)


def test_check_run_kubernetes_and_manual_gates(
    gated_k8s: Gated, cluster: FakeKubernetes, fake_github: FakeGitHub
) -> None:
    gated = gated_k8s
    gated.connect("--staging-branch", "staging", "--promote-after", "production=check-run:deploy-app", "--promote-after", "staging=kubernetes:apps/web")  # fmt: skip

    # check-run:deploy-app — another check, and one still queued, decide nothing.
    sha = gated.push("v1")
    v1 = gated.status_of(sha, "waiting")["version"]
    gated.deliver("check_run", check_run(sha, "ci"))
    gated.deliver("check_run", check_run(sha, "deploy-app", action="created"))
    gated.server.wait_for(lambda: signals_and_decisions(gated)[0] >= 2, timeout=60)
    assert signals_and_decisions(gated) == (2, 0)
    assert gated.deployment(sha)["status"] == "waiting"
    gated.deliver("check_run", check_run(sha, "deploy-app"))
    assert gated.status_of(sha, "deployed")["version"] == v1
    assert gated.current() == v1

    # kubernetes:apps/web — not rolled out (a generation not yet observed) decides
    # nothing; rolled out with the commit in the image tag promotes.
    cluster.put(deployment("apps", "web", image=f"registry.example.com/web:{sha[:12]}", generation=3, observed=2))  # fmt: skip
    response = gated.server.deliver(
        "push", payloads.push(repo=REPO, ref="refs/heads/staging", before="0" * 40, after=sha)
    )
    assert response.status_code == 202
    staged = gated.server.wait_for(lambda: _staging(gated, "waiting"), timeout=240)
    seen = cluster.reads
    gated.server.wait_for(lambda: cluster.reads >= seen + 2, timeout=60)  # two more polls
    assert _staging(gated, "waiting")
    cluster.put(deployment("apps", "web", image=f"registry.example.com/web:{sha[:12]}", generation=3, observed=3))  # fmt: skip
    gated.server.wait_for(lambda: _staging(gated, "deployed"), timeout=120)
    assert staged["version"]

    # manual: only `slipway promote` makes it current.
    cli(gated.server, "projects", "update", "demo", "--promote-after", "production=manual")
    second = gated.push("v2")
    v2 = gated.status_of(second, "waiting")["version"]
    assert gated.current() == v1
    cli(gated.server, "promote", v2, "--project", "demo", "--env", "production")
    assert gated.status_of(second, "deployed")["version"] == v2
    assert gated.current() == v2 and gated.says() == "v2"

    # check-run:deploy-app whose delivery is lost: GitHub has the check run, so the
    # resync reads it (another check's failure beside it decides nothing) and promotes.
    cli(gated.server, "projects", "update", "demo", "--promote-after", "production=check-run:deploy-app")  # fmt: skip
    third = gated.push("v3")
    v3 = gated.status_of(third, "waiting")["version"]
    fake_github.add_check_run(REPO, sha=third, name="lint", conclusion="failure")
    fake_github.add_check_run(REPO, sha=third, name="deploy-app", conclusion="success")
    assert gated.status_of(third, "deployed", timeout=120)["version"] == v3
    assert gated.current() == v3 and gated.says() == "v3"

    # ENV=none removes the gate: the next push promotes at once.
    cli(gated.server, "projects", "update", "demo", "--promote-after", "production=none")
    fourth = gated.push("v4")
    assert gated.status_of(fourth, "deployed")["gate"] is None
    assert gated.says() == "v4"


def _staging(gated: Gated, status: str) -> dict | None:
    rows = gated.server.deployments(env="staging")
    return rows[0] if rows and rows[0]["status"] == status else None
