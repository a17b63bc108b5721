"""GitHub API calls and rate limits on ``/metrics``.

The calls happen in the controller child of a real ``slipway serve`` (the reporter, the
resync, installation tokens) while the web process answers the scrape: the figures must
cross that process boundary. The fake GitHub sends ``X-RateLimit-*`` headers as GitHub does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import github
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import payloads
from support.fake_github import FakeGitHub
from support.git_http import GitHttpServer
from support.repos import TaskRepo
from support.server import Server

from controller.github.client import AppClient
from controller.github.errors import GitHubRejected
from controller.github.metering import METER, Meter, metered, status_class

INSTALLATION_ID = 5151
REPO = "octo-org/private-tasks"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def app_server(tmp_path: Path, fake_github: FakeGitHub) -> Iterator[Server]:
    payloads.require_node_modules()
    key = tmp_path / "app.pem"
    key.write_text(fake_github.private_key)
    env = {
        "SLIPWAY_GITHUB_APP_ID": str(fake_github.app_id),
        "SLIPWAY_GITHUB_PRIVATE_KEY_PATH": str(key),
        "SLIPWAY_GITHUB_API_URL": fake_github.url,
        "SLIPWAY_PUBLIC_URL": "https://slipway.example.test",
    }
    server = Server(tmp_path / "data", extra_env=env, log_level="info")
    try:
        yield server.start(timeout=120)
    finally:
        server.close()


def scrape(server: Server) -> tuple[str, Samples]:
    response = server.client.get("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return response.text, samples


def github_calls(samples: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["method"], dict(labels)["status"]): v
        for (name, labels), v in samples.items()
        if name == "slipway_github_api_calls_total"
    }


def rate_limits(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["installation"]: v
        for (name, labels), v in samples.items()
        if name == "slipway_github_rate_limit_remaining"
    }


def test_calls_of_the_controller_child_reach_the_scrape(
    app_server: Server,
    fake_github: FakeGitHub,
    git_host: GitHttpServer,
    private_repo: TaskRepo,
) -> None:
    app_server.create_project("demo", repo=REPO)
    sha = private_repo.head()
    fake_github.branches[REPO] = {"main": sha}
    body = payloads.push(
        repo=REPO,
        before="0" * 40,
        after=sha,
        clone_url=git_host.clone_url(REPO),
        installation_id=INSTALLATION_ID,
    )
    assert app_server.deliver("push", body).status_code == 202
    app_server.wait_for(
        lambda: any(
            s["state"] == "success"
            for d in fake_github.deployments.values()
            if d["sha"] == sha
            for s in fake_github.deployment_statuses[d["id"]]
        ),
        timeout=240,
    )

    # The child's last write may follow GitHub's answer by a moment: poll the scrape.
    def reported() -> Samples | None:
        _text, samples = scrape(app_server)
        calls = github_calls(samples)
        ok = calls.get(("POST", "2xx"), 0) >= 2 and str(INSTALLATION_ID) in rate_limits(samples)
        return samples if ok else None

    samples = app_server.wait_for(reported, timeout=60)
    calls = github_calls(samples)
    assert set(s for _m, s in calls) <= {"2xx", "3xx", "4xx", "5xx", "error"}
    assert sum(calls.values()) >= 4  # a token, a deployment, its statuses, a check run
    left = rate_limits(samples)[str(INSTALLATION_ID)]
    assert 0 < left < fake_github.rate_limit
    assert left >= fake_github.rate_limit - len(fake_github.requests)

    text, _ = scrape(app_server)
    tokens = [i.token for i in fake_github.issued]
    assert tokens and not [t[:8] for t in tokens if t in text]


def test_counts_of_every_process_are_summed(tmp_path: Path) -> None:
    directory = tmp_path / "metrics" / "github"
    meter = Meter()
    meter.start(directory, clean=True)
    meter.record("GET", 200, installation="7", headers={"X-RateLimit-Remaining": "4000"})
    meter.record("post", 503)
    other = {"calls": [["GET", "2xx", 3], ["PATCH", "4xx", 1]], "limits": {"7": [3990, 1e12]}}
    (directory / f"{os.getpid() + 1}.json").write_text(json.dumps(other))

    calls, limits = meter.totals()

    assert calls == {("GET", "2xx"): 4, ("POST", "5xx"): 1, ("PATCH", "4xx"): 1}
    assert limits == {"7": 3990}  # the newest figure wins
    assert oct(directory.stat().st_mode & 0o777) == "0o700"

    meter.start(directory, clean=True)  # a new server: counts restart from zero
    assert meter.totals() == ({}, {})


def test_a_pygithub_failure_is_counted_by_status_class() -> None:
    before, _ = METER.totals()
    with pytest.raises(github.GithubException), metered("GET", installation="9"):
        raise github.GithubException(404, {"message": "Not Found"}, {})
    with pytest.raises(OSError), metered("DELETE"):
        raise OSError("connection refused")
    after, _ = METER.totals()
    assert after.get(("GET", "4xx"), 0) - before.get(("GET", "4xx"), 0) == 1
    assert after.get(("DELETE", "error"), 0) - before.get(("DELETE", "error"), 0) == 1
    assert [status_class(s) for s in (201, 304, 429, 502, None, 999)] == [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "error",
        "error",
    ]


def test_every_request_of_the_app_client_is_counted(fake_github: FakeGitHub) -> None:
    client = AppClient(
        app_id=fake_github.app_id, private_key=fake_github.private_key, api_url=fake_github.url
    )
    before, _ = METER.totals()
    client.app_info()
    client.installations()
    client.installation_repositories(INSTALLATION_ID)
    client.list_deployments(REPO, installation_id=INSTALLATION_ID, sha="a" * 40, environment=None)
    with pytest.raises(GitHubRejected):
        client.request(INSTALLATION_ID, "GET", f"/repos/{REPO}/branches/main")  # unknown
    after, limits = METER.totals()

    grown = {k: after.get(k, 0) - before.get(k, 0) for k in after if after[k] != before.get(k)}
    assert sum(grown.values()) == len(fake_github.requests)
    assert grown[("POST", "2xx")] == 1  # the installation token, created once
    assert grown[("GET", "4xx")] == 1
    assert limits[str(INSTALLATION_ID)] == fake_github.rate_limit - len(fake_github.requests)
    assert "app" in limits
