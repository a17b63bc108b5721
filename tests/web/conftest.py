"""Fixtures for the pages: a real ``slipway serve`` with a really deployed project.

``site`` is built once per session (three real builds take a while): production has two
deployed versions (so Rollback has somewhere to go) and one preview branch is deployed.
Tests that change the current version put it back before they end.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import payloads
from support.repos import TaskRepo
from support.server import Server

REPO = "octo-org/demo"
SECRET_VALUE = "s3cr3t-value-never-on-a-page"
PLAIN_VALUE = "plain-value-not-shown-either"
ARTIFACTS = Path(__file__).parent / "artifacts"


@dataclass
class Site:
    server: Server
    repo: TaskRepo
    first: dict[str, Any]
    second: dict[str, Any]
    preview: dict[str, Any]
    run: dict[str, Any]

    def current(self, env: str = "production") -> str | None:
        envs = self.server.ok("GET", "/api/v1/projects/demo/environments")
        return next(e["current_version"] for e in envs if e["name"] == env and not e["branch"])

    def restore(self) -> None:
        """Make the newest production version current again."""
        if self.current() != self.second["version"]:
            self.server.ok(
                "POST",
                "/api/v1/projects/demo/environments/production/promote",
                json={"version": self.second["version"]},
            )

    def login(self) -> httpx.Client:
        client = httpx.Client(base_url=self.server.url, timeout=60, trust_env=False)
        response = client.post(
            "/login",
            data={"token": self.server.token, "next": "/"},
            headers={"Origin": self.server.url},
        )
        assert response.status_code == 303, response.text
        return client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def deploy(server: Server, *, sha: str, env: str = "production") -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next(
            (d for d in server.deployments() if d["sha"] == sha and d["environment"] == env),
            None,
        )

    dep = server.wait_for(find, timeout=60)
    final = server.wait_deployment(dep["id"], timeout=300)
    assert final["status"] == "deployed", f"{final['error']}\n{server.log()}"
    return dict(final)


def set_envvars(server: Server) -> None:
    """Production: a secret and a plain variable; preview-wide: two plain ones, one of which
    the ``feature/pages`` branch overrides with a secret of its own."""
    base = "/api/v1/projects/demo/envvars"
    server.ok(
        "POST",
        f"{base}/production",
        json={"name": "API_TOKEN", "value": SECRET_VALUE, "secret": True},
    )
    server.ok("POST", f"{base}/production", json={"name": "LOG_LEVEL", "value": PLAIN_VALUE})
    server.ok(
        "POST",
        f"{base}/preview",
        json={"variables": {"SHARED_URL": PLAIN_VALUE, "DB_URL": PLAIN_VALUE}, "fork_safe": True},
    )
    server.ok(
        "POST",
        f"{base}/preview?branch=feature%2Fpages",
        json={"name": "DB_URL", "value": SECRET_VALUE, "secret": True},
    )


def build_site(tmp: Path, **server_args: Any) -> Site:
    payloads.require_node_modules()
    repo = TaskRepo(tmp / "repo")
    server = Server(tmp / "data", **server_args).start()
    try:
        server.create_project("demo", repo=REPO, clone_url=str(repo.path))
        before = "0" * 40
        shas = []
        for message in ("hello v1", "hello v2"):
            sha = repo.head() if not shas else repo.set_message(message)
            push = payloads.push(repo=REPO, ref="refs/heads/main", before=before, after=sha)
            assert server.deliver("push", push).status_code == 202
            shas.append(deploy(server, sha=sha))
            before = sha
        repo.checkout("feature/pages", create=True)
        head = repo.set_message("hello preview")
        opened = payloads.pull_request(
            action="opened", repo=REPO, head_ref="feature/pages", head_sha=head
        )
        assert server.deliver("pull_request", opened).status_code == 202
        preview = deploy(server, sha=head, env="preview")
        ran = server.trigger("demo", "production", "hello", {"n": 1})
        assert ran.status_code == 200, ran.text
        set_envvars(server)
    except BaseException:
        server.close()
        raise
    return Site(
        server=server, repo=repo, first=shas[0], second=shas[1], preview=preview, run=ran.json()
    )


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    built = build_site(tmp_path_factory.mktemp("site"))
    try:
        yield built
    finally:
        built.server.close()


@pytest.fixture
def browser_client(site: Site) -> Iterator[httpx.Client]:
    client = site.login()
    try:
        yield client
    finally:
        client.close()
        site.restore()
