"""End-to-end fixtures: a real server, a real repository, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from support import payloads
from support.repos import TaskRepo
from support.server import Server
from support.waiting import scaled

REPO = "octo-org/demo"


def today() -> str:
    return datetime.now(UTC).strftime("%Y%m%d")


def cli(server: Server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(server.env)
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(300),
        cwd=server.data_dir.parent,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"slipway {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def last_json(text: str) -> Any:
    return json.loads(text.strip().splitlines()[-1])


class Flow:
    """A project wired to a task repository, and the deliveries GitHub would send."""

    def __init__(self, server: Server, repo: TaskRepo) -> None:
        self.server = server
        self.repo = repo
        self.before = "0" * 40
        payloads.require_node_modules()

    def connect(self, **fields: Any) -> dict[str, Any]:
        return self.server.create_project(
            "demo", repo=REPO, clone_url=str(self.repo.path), **fields
        )

    def push(self, sha: str | None = None, *, branch: str = "main") -> dict[str, Any]:
        sha = sha or self.repo.head()
        response = self.server.deliver(
            "push",
            payloads.push(repo=REPO, ref=f"refs/heads/{branch}", before=self.before, after=sha),
        )
        assert response.status_code == 202, response.text
        self.before = sha
        return self.deployment_for(sha)

    def deployment_for(self, sha: str, env: str = "production") -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for dep in self.server.deployments():
                if dep["sha"] == sha and dep["environment"] == env:
                    return dep
            return None

        return dict(self.server.wait_for(find))

    def pull_request(
        self, action: str, *, branch: str, sha: str, number: int = 7, **kw: Any
    ) -> None:
        response = self.server.deliver(
            "pull_request",
            payloads.pull_request(
                action=action, number=number, repo=REPO, head_ref=branch, head_sha=sha, **kw
            ),
        )
        assert response.status_code == 202, response.text

    def deployed(self, sha: str | None = None, env: str = "production") -> dict[str, Any]:
        dep = self.deployment_for(sha or self.repo.head(), env)
        final = self.server.wait_deployment(dep["id"])
        assert final["status"] == "deployed", (
            f"{final['status']}: {final['error']}\n{self.server.log()}"
        )
        return final

    def run(
        self,
        task: str = "hello",
        payload: Any = None,
        *,
        env: str = "production",
        branch: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        response = self.server.trigger("demo", env, task, payload, branch=branch, version=version)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def environments(self) -> dict[str, dict[str, Any]]:
        envs = self.server.ok("GET", "/api/v1/projects/demo/environments")
        return {(e["branch"] or e["name"]): e for e in envs}


@pytest.fixture
def flow(server: Server, task_repo: TaskRepo) -> Flow:
    f = Flow(server, task_repo)
    f.connect()
    return f
