"""Acceptance: ``slipway serve`` with a GitHub App deploys a private repository.

The fake GitHub (validating every request against GitHub's spec) is the App's API; the
repository lives on a ``git http-backend`` host that accepts only installation tokens the
fake issued. The project has no ``--clone-url``: the clone URL and the installation come
from the push delivery (a real payload from ``@octokit/webhooks-examples``, edited and
signed). Afterwards the token is in no log line, no file under the data dir and no git
config.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import payloads
from support.fake_github import FakeGitHub
from support.git_http import GitHttpServer
from support.repos import TaskRepo
from support.server import Server

INSTALLATION_ID = 5151
REPO = "octo-org/private-tasks"


def app_env(fake: FakeGitHub, tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "app.pem"
    key.write_text(fake.private_key)
    return {
        "SLIPWAY_GITHUB_APP_ID": str(fake.app_id),
        "SLIPWAY_GITHUB_PRIVATE_KEY_PATH": str(key),
        "SLIPWAY_GITHUB_API_URL": fake.url,
    }


@pytest.fixture
def app_server(tmp_path: Path, fake_github: FakeGitHub) -> Iterator[Server]:
    payloads.require_node_modules()
    server = Server(tmp_path / "data", extra_env=app_env(fake_github, tmp_path), log_level="debug")
    try:
        yield server.start()
    finally:
        server.close()


def files_containing(root: Path, needles: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {n[:8]}…" for n in needles if n.encode() in data]
    return found


def test_serve_deploys_a_private_repository_with_an_installation_token(
    app_server: Server,
    fake_github: FakeGitHub,
    git_host: GitHttpServer,
    private_repo: TaskRepo,
) -> None:
    app_server.create_project("demo", repo=REPO)  # no clone URL: the delivery names it
    sha = private_repo.head()
    clone_url = git_host.clone_url(REPO)
    response = app_server.deliver(
        "push",
        payloads.push(
            repo=REPO,
            before="0" * 40,
            after=sha,
            clone_url=clone_url,
            installation_id=INSTALLATION_ID,
        ),
    )
    assert response.status_code == 202, response.text

    def find() -> dict | None:
        return next((d for d in app_server.deployments() if d["sha"] == sha), None)

    dep = app_server.wait_for(find, timeout=60)
    final = app_server.wait_deployment(dep["id"], timeout=240)
    assert final["status"] == "deployed", f"{final['error']}\n{app_server.log()}"
    assert app_server.trigger("demo", "production", "hello", {}).status_code == 200

    assert "GitHub App slipway-test (id 4242)" in app_server.log()
    assert "apps/create-installation-access-token" in fake_github.operation_ids()
    assert any(seen.accepted for seen in git_host.seen)
    tokens = sorted(i.token for i in fake_github.issued)
    assert tokens
    secrets = [
        *tokens,
        *(base64.b64encode(f"x-access-token:{t}".encode()).decode() for t in tokens),
    ]
    app_server.stop()
    log = app_server.log_path.read_text(errors="replace")
    assert not [s for s in secrets if s in log]
    assert files_containing(app_server.data_dir, secrets) == []
    for mirror in (app_server.data_dir / "git").glob("*.git"):
        config = subprocess.run(
            ["git", "--git-dir", str(mirror), "config", "--list", "--show-origin"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "extraheader" not in config.lower()
        assert not [s for s in secrets if s in config]
    # fake_github's fixture then checks that every request it received was valid.


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"SLIPWAY_GITHUB_APP_ID": "777"}, "GitHub knows no App with id 777"),
        ({"SLIPWAY_GITHUB_PRIVATE_KEY_PATH": "/nonexistent/app.pem"}, "cannot read the GitHub App"),
        ("other-key", "the private key does not belong to App 4242"),
    ],
)
def test_serve_refuses_to_start_with_a_wrong_identity(
    tmp_path: Path, fake_github: FakeGitHub, override: dict[str, str] | str, expected: str
) -> None:
    server = Server(tmp_path / "data", extra_env=app_env(fake_github, tmp_path))
    if override == "other-key":
        from support.fake_github import generate_private_key

        other = tmp_path / "other.pem"
        other.write_text(generate_private_key())
        server.env["SLIPWAY_GITHUB_PRIVATE_KEY_PATH"] = str(other)
    else:
        assert isinstance(override, dict)
        server.env.update(override)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "controller.cli", "serve"],
            env=server.env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.client.close()
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr
    assert "PRIVATE KEY" not in done.stderr
