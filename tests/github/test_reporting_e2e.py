"""Acceptance: ``slipway serve`` reports on the fake GitHub and reconciles from it.

The App is the fake GitHub (every request validated against GitHub's spec); the private
repository is on a ``git http-backend`` host that accepts only the installation tokens
the fake issued. Deliveries are real ``@octokit/webhooks-examples`` payloads, signed.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import payloads
from support.fake_github import FakeGitHub, pull_request
from support.git_http import GitHttpServer
from support.repos import TaskRepo, git
from support.server import Server

INSTALLATION_ID = 5151
REPO = "octo-org/private-tasks"
PUBLIC = "https://slipway.example.test"
FINAL = ("success", "failure", "error")


@pytest.fixture
def app_server(tmp_path: Path, fake_github: FakeGitHub) -> Iterator[Server]:
    payloads.require_node_modules()
    key = tmp_path / "app.pem"
    key.write_text(fake_github.private_key)
    env = {
        "SLIPWAY_GITHUB_APP_ID": str(fake_github.app_id),
        "SLIPWAY_GITHUB_PRIVATE_KEY_PATH": str(key),
        "SLIPWAY_GITHUB_API_URL": fake_github.url,
        "SLIPWAY_PUBLIC_URL": PUBLIC,
        "SLIPWAY_RESYNC_BRANCHES": "true",
    }
    server = Server(tmp_path / "data", extra_env=env, log_level="debug")
    try:
        yield server.start(timeout=120)
    finally:
        server.close()


def publish(repo: TaskRepo, tmp_path: Path, *refspecs: str) -> None:
    git(repo.path, "push", "-q", "--force", str(tmp_path / "host" / f"{REPO}.git"), *refspecs)


def github_deployment(fake: FakeGitHub, sha: str, environment: str) -> dict[str, Any] | None:
    return next(
        (
            d
            for d in fake.deployments.values()
            if d["sha"] == sha and d["environment"] == environment
        ),
        None,
    )


def statuses(fake: FakeGitHub, sha: str, environment: str) -> list[dict[str, Any]]:
    found = github_deployment(fake, sha, environment)
    return list(fake.deployment_statuses[found["id"]]) if found else []


def check_run(fake: FakeGitHub, sha: str, name: str) -> dict[str, Any] | None:
    return next(
        (r for r in fake.check_runs.values() if r["head_sha"] == sha and r["name"] == name), None
    )


def ends(fake: FakeGitHub, sha: str, environment: str) -> str | None:
    found = statuses(fake, sha, environment)
    return found[-1]["state"] if found and found[-1]["state"] in FINAL else None


def wait_deployed(server: Server, sha: str, timeout: float = 240) -> dict[str, Any]:
    dep = server.wait_for(
        lambda: next((d for d in server.deployments() if d["sha"] == sha), None), timeout=120
    )
    return server.wait_deployment(dep["id"], timeout=timeout)


def test_pushes_are_reported_and_an_outage_only_delays(
    tmp_path: Path,
    app_server: Server,
    fake_github: FakeGitHub,
    git_host: GitHttpServer,
    private_repo: TaskRepo,
) -> None:
    app_server.create_project("demo", repo=REPO)
    clone_url = git_host.clone_url(REPO)
    sha = private_repo.head()
    fake_github.branches[REPO] = {"main": sha}

    def push(after: str, before: str = "0" * 40) -> None:
        body = payloads.push(
            repo=REPO,
            before=before,
            after=after,
            clone_url=clone_url,
            installation_id=INSTALLATION_ID,
        )
        assert app_server.deliver("push", body).status_code == 202

    push(sha)
    final = wait_deployed(app_server, sha)
    assert final["status"] == "deployed", final["error"]
    app_server.wait_for(lambda: ends(fake_github, sha, "slipway/production"), timeout=60)
    (gh,) = [d for d in fake_github.deployments.values() if d["sha"] == sha]
    assert gh["production_environment"] is True
    last = statuses(fake_github, sha, "slipway/production")[-1]
    assert last["state"] == "success"
    assert last["environment_url"] == f"{PUBLIC}/projects/demo/environments/production"
    assert last["log_url"] == f"{PUBLIC}/deployments/{final['id']}"
    run = app_server.wait_for(
        lambda: (
            (r := check_run(fake_github, sha, "Slipway (production)"))
            and r["status"] == "completed"
            and r
        ),
        timeout=60,
    )
    assert run["conclusion"] == "success" and final["version"] in run["output"]["summary"]

    # A broken build: failure, with the failing file in the check run.
    private_repo.write("tasks/broken.py", "def run(payload, ctx)\n    return 1\n")
    broken = private_repo.commit("break it")
    publish(private_repo, tmp_path, "main")
    fake_github.branches[REPO]["main"] = broken
    push(broken, sha)
    assert wait_deployed(app_server, broken)["status"] == "failed"
    app_server.wait_for(lambda: ends(fake_github, broken, "slipway/production"), timeout=60)
    assert ends(fake_github, broken, "slipway/production") == "failure"
    run = app_server.wait_for(
        lambda: (
            (r := check_run(fake_github, broken, "Slipway (production)"))
            and r["status"] == "completed"
            and r
        ),
        timeout=60,
    )
    assert run["conclusion"] == "failure" and "tasks/broken.py" in run["output"]["text"]

    # GitHub down mid-deployment: the deployment still ends deployed; statuses come later.
    (private_repo.path / "tasks/broken.py").unlink()
    fixed = private_repo.commit("fix it")
    publish(private_repo, tmp_path, "main")
    fake_github.outage = 503
    fake_github.branches[REPO]["main"] = fixed
    push(fixed, broken)
    assert wait_deployed(app_server, fixed)["status"] == "deployed"
    assert ends(fake_github, fixed, "slipway/production") is None
    fake_github.outage = None
    app_server.wait_for(lambda: ends(fake_github, fixed, "slipway/production"), timeout=120)
    assert ends(fake_github, fixed, "slipway/production") == "success"

    # A push whose delivery was lost: the resync reads the head from GitHub and deploys it.
    lost = private_repo.set_message("lost delivery")
    publish(private_repo, tmp_path, "main")
    fake_github.branches[REPO]["main"] = lost
    final = wait_deployed(app_server, lost)
    assert final["status"] == "deployed"
    assert len([d for d in fake_github.deployments.values() if d["sha"] == lost]) <= 1

    # No secret anywhere: installation tokens, the private key.
    tokens = sorted(i.token for i in fake_github.issued)
    secrets = [
        *tokens,
        *(base64.b64encode(f"x-access-token:{t}".encode()).decode() for t in tokens),
        fake_github.private_key.splitlines()[1],
    ]
    app_server.stop()
    log = app_server.log_path.read_text(errors="replace")
    assert [s[:8] for s in secrets if s in log] == []
    for path in app_server.data_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert [s[:8] for s in secrets if s.encode() in data] == [], path


def test_a_pull_request_keeps_one_comment_and_the_resync_repairs_missed_events(
    tmp_path: Path,
    app_server: Server,
    fake_github: FakeGitHub,
    git_host: GitHttpServer,
    private_repo: TaskRepo,
) -> None:
    app_server.create_project("demo", repo=REPO, production_branch="main")
    clone_url = git_host.clone_url(REPO)
    fake_github.branches[REPO] = {}  # main unknown: the branch pass deploys nothing
    private_repo.checkout("feature", create=True)
    first = private_repo.set_message("feature v1")
    publish(private_repo, tmp_path, "feature", "feature:refs/pull/7/head")

    def deliver(action: str, sha: str) -> None:
        body = payloads.pull_request(
            action=action,
            number=7,
            repo=REPO,
            head_ref="feature",
            head_sha=sha,
            installation_id=INSTALLATION_ID,
        )
        body["repository"]["clone_url"] = clone_url
        assert app_server.deliver("pull_request", body).status_code == 202

    fake_github.pulls[REPO] = [pull_request(repo=REPO, number=7, branch="feature", sha=first)]
    deliver("opened", first)
    assert wait_deployed(app_server, first)["status"] == "deployed"
    env = "slipway/preview/feature"
    app_server.wait_for(lambda: ends(fake_github, first, env), timeout=60)

    def comments() -> list[dict[str, Any]]:
        return [c for c in fake_github.comments.values() if c["number"] == 7]

    app_server.wait_for(lambda: comments() and first[:12] in comments()[0]["body"], timeout=60)

    second = private_repo.set_message("feature v2")
    publish(private_repo, tmp_path, "feature", "feature:refs/pull/7/head")
    fake_github.pulls[REPO] = [pull_request(repo=REPO, number=7, branch="feature", sha=second)]
    deliver("synchronize", second)
    assert wait_deployed(app_server, second)["status"] == "deployed"
    app_server.wait_for(
        lambda: "deployed" in comments()[0]["body"] and second[:12] in comments()[0]["body"],
        timeout=60,
    )
    assert len(comments()) == 1

    fake_github.pulls[REPO] = []
    deliver("closed", second)
    app_server.wait_for(lambda: "archived" in comments()[0]["body"], timeout=60)
    assert len(comments()) == 1 and comments()[0]["edits"] >= 2
    previews = [d for d in fake_github.deployments.values() if d["environment"] == env]
    assert len(previews) == 2 and all(d["transient_environment"] for d in previews)
    app_server.wait_for(
        lambda: all(
            statuses(fake_github, d["sha"], env)[-1]["state"] == "inactive" for d in previews
        ),
        timeout=60,
    )

    # A pull request Slipway never heard of: the resync deploys its preview...
    publish(private_repo, tmp_path, "feature:refs/heads/other", "feature:refs/pull/8/head")
    fake_github.pulls[REPO] = [pull_request(repo=REPO, number=8, branch="other", sha=second)]

    def preview_env(branch: str) -> dict[str, Any] | None:
        envs = app_server.ok("GET", "/api/v1/projects/demo/environments")
        return next((e for e in envs if e.get("branch") == branch), None)

    app_server.wait_for(lambda: preview_env("other"), timeout=60)
    # ...and while GitHub answers 5xx, closing it unheard archives nothing...
    fake_github.outage = 503
    fake_github.pulls[REPO] = []
    listed = len([r for r in fake_github.requests if r[2] == "pulls/list"])
    app_server.wait_for(
        lambda: len([r for r in fake_github.requests if r[2] == "pulls/list"]) >= listed + 3,
        timeout=60,
    )
    assert preview_env("other")["status"] == "active"  # type: ignore[index]
    # ...and once GitHub answers, it is archived.
    fake_github.outage = None
    # (SETTLE: not within 30 s of its deployment.)
    app_server.wait_for(lambda: preview_env("other")["status"] == "archived", timeout=120)  # type: ignore[index]
