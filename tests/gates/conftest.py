"""Fixtures for promotion gates: a real ``slipway serve`` whose GitHub App is the fake
GitHub (validating every request against GitHub's spec), a task repository, and the
deliveries GitHub would send, signed for real."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import payloads
from support.fake_github import SPEC_PATH, FakeGitHub
from support.repos import TaskRepo
from support.server import Server
from support.waiting import scaled

REPO = "octo-org/demo"
INSTALLATION_ID = payloads.DEFAULT_INSTALLATION_ID


def app_env(fake: FakeGitHub, tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "app.pem"
    key.write_text(fake.private_key)
    return {
        "SLIPWAY_GITHUB_APP_ID": str(fake.app_id),
        "SLIPWAY_GITHUB_PRIVATE_KEY_PATH": str(key),
        "SLIPWAY_GITHUB_API_URL": fake.url,
    }


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    if not SPEC_PATH.exists():
        pytest.fail(f"{SPEC_PATH} missing: run `npm ci` in tests/node")
    with FakeGitHub() as fake:
        fake.add_installation(INSTALLATION_ID, account="octo-org", repos=[REPO])
        yield fake
        assert fake.errors == [], "requests GitHub's spec does not allow:\n" + "\n".join(
            fake.errors
        )


@pytest.fixture
def gh_server(tmp_path: Path, fake_github: FakeGitHub) -> Iterator[Server]:
    payloads.require_node_modules()
    server = Server(tmp_path / "data", extra_env=app_env(fake_github, tmp_path))
    try:
        yield server.start()
    finally:
        server.close()


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        env=dict(server.env),
        capture_output=True,
        text=True,
        timeout=scaled(300),
        cwd=server.data_dir.parent,
    )
    assert result.returncode == 0, f"slipway {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result


class Gated:
    """A project wired to a task repository, with what GitHub would deliver."""

    def __init__(self, server: Server, repo: TaskRepo) -> None:
        self.server = server
        self.repo = repo
        self.before = "0" * 40

    def connect(self, *options: str) -> None:
        cli(self.server, "projects", "create", "demo", "--repo", REPO, "--clone-url", str(self.repo.path), *options)  # fmt: skip

    def push(self, message: str) -> str:
        sha = self.repo.set_message(message)
        response = self.server.deliver(
            "push", payloads.push(repo=REPO, before=self.before, after=sha)
        )
        assert response.status_code == 202, response.text
        self.before = sha
        return sha

    def deliver(self, event: str, payload: dict[str, Any]) -> None:
        response = self.server.deliver(event, payload)
        assert response.status_code == 202, response.text

    def deployment(self, sha: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((d for d in self.server.deployments() if d["sha"] == sha), None)

        return dict(self.server.wait_for(find, timeout=60))

    def status_of(self, sha: str, *statuses: str, timeout: float = 240) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            dep = self.deployment(sha)
            if dep["status"] not in {*statuses, "queued", "installing", "building", "deploying", "waiting"}:  # fmt: skip
                raise AssertionError(f"{sha[:7]} ended {dep['status']}: {dep['error']}")
            return dep if dep["status"] in statuses else None

        return dict(self.server.wait_for(reached, timeout=timeout))

    def current(self) -> str | None:
        envs = self.server.ok("GET", "/api/v1/projects/demo/environments")
        return next(e["current_version"] for e in envs if e["name"] == "production")

    def says(self) -> str:
        response = self.server.trigger("demo", "production", "hello")
        assert response.status_code == 200, response.text
        return str(response.json()["output"]["message"])

    def logs(self, deployment_id: str) -> str:
        page = self.server.ok("GET", f"/api/v1/deployments/{deployment_id}/logs")
        return "\n".join(line["message"] for line in page["lines"])


@pytest.fixture
def gated(gh_server: Server, task_repo: TaskRepo) -> Gated:
    payloads.require_node_modules()
    return Gated(gh_server, task_repo)


def signals_and_decisions(gated: Gated) -> tuple[int, int]:
    """Signals recorded, and decisions (promote jobs other than the deadline's) queued."""
    db = sqlite3.connect(f"file:{gated.server.data_dir / 'slipway.db'}?mode=ro", uri=True)
    try:
        (signals,) = db.execute("SELECT count(*) FROM commit_signals").fetchone()
        (decisions,) = db.execute(
            "SELECT count(*) FROM jobs WHERE kind = 'promote' AND payload NOT LIKE '%timeout%'"
        ).fetchone()
    finally:
        db.close()
    return int(signals), int(decisions)
