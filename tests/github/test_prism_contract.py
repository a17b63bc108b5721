"""Contract test: the calls the reporter and the resolver make, against Prism.

``prism mock`` (npm ``@stoplight/prism-cli``, ``tests/node``) serves GitHub's own REST
spec, the full bundled ``@octokit/openapi`` ``api.github.com.json`` (it loads in about a
minute and ~200 MB here; no reduced spec is needed), and validates every request against
it — an independent second opinion next to ``support.fake_github``'s validator. Slipway's
real :class:`AppClient` (PyGithub) talks to it: the reporter's pass (deployment, status, check run, PR comment, with their look-ups) and
the resolver's reads (repository, branch, open pull requests). Prism answers with the
spec's examples; the test fails if Prism logged any request violation.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from support.fake_github import SPEC_PATH, generate_private_key
from support.waiting import poll_until, scaled

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import ensure_environment
from controller.domain.projects import create_project
from controller.github.client import AppClient
from controller.github.reporting import Reporter
from controller.reconcile.github import ConditionalReads, GitHubBranches, PullRequestPass
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.tables import GitHubComment, GitHubReport, Repository

PRISM = Path(__file__).resolve().parents[1] / "node/node_modules/.bin/prism"
REPO = "octocat/hello-world"
INSTALLATION_ID = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    if not PRISM.exists() or not SPEC_PATH.exists():
        pytest.fail(f"{PRISM} or {SPEC_PATH} missing: run `npm ci` in tests/node")
    port = free_port()
    log_path = tmp_path_factory.mktemp("prism") / "prism.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(PRISM), "mock", "--host", "127.0.0.1", "--port", str(port), str(SPEC_PATH)],
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
            env={**os.environ, "NO_COLOR": "1"},
        )
    url = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prism exited:\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/zen", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        poll_until(listening, timeout=300, interval=1.0, what="prism mock listening")
        yield url, log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=scaled(30))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def violations(log_path: Path) -> list[str]:
    """Request violations. Prism also checks its answers, and some of the spec's own
    examples miss required properties (``Violation: response.body…``): not ours."""
    lines = log_path.read_text(errors="replace").splitlines()
    return [
        line.strip()
        for line in lines
        if ("✖" in line or "Violation" in line) and "Violation: response" not in line
    ]


@pytest.mark.node
@pytest.mark.timeout(600)
def test_the_reporter_and_resolver_calls_pass_prism_validation(
    prism: tuple[str, Path], sqlite_database: Database
) -> None:
    url, log_path = prism
    db = sqlite_database
    cipher = Cipher([Fernet.generate_key().decode()])
    client = AppClient(app_id=1, private_key=generate_private_key(), api_url=url)
    # PyGithub asks the App endpoints (the token) for a preview media type, which GitHub
    # serves and Prism's content negotiation refuses (406): the token is seeded here, and
    # its creation is validated by support.fake_github in every other GitHub test.
    client._tokens[INSTALLATION_ID] = ("ghs_" + "0" * 36, datetime.now(UTC) + timedelta(hours=1))
    with db.transaction() as session:
        project = create_project(session, cipher, ref="demo", repo=REPO, production_branch="main")
        session.add(
            Repository(
                full_name=REPO, full_name_lower=REPO.lower(), installation_id=INSTALLATION_ID
            )
        )
        for env_name, branch, pr in (("production", None, None), ("preview", "feature", 7)):
            env = ensure_environment(
                session,
                cipher,
                project=project,
                name=env_name,
                branch=branch,
                **({"pr_number": pr} if pr else {}),
            )
            dep = request_deployment(
                session,
                project=project,
                environment=env,
                request=DeployRequest(
                    sha="a" * 40, ref="refs/heads/main", source="push", pr_number=pr
                ),
            )
            dep.status, dep.error = "failed", "a task file failed to load: tasks/x.py, line 2: boom"

    Reporter(db=db, client_for=lambda: client, public_url="https://slipway.example").run()
    with db.read() as session:
        reports = list(session.query(GitHubReport))
        comments = list(session.query(GitHubComment))
    assert len(reports) == 2 and all(r.error is None for r in reports), [r.error for r in reports]
    assert all(r.github_deployment_id and r.check_run_id for r in reports)
    assert len(comments) == 1 and comments[0].comment_id

    reads = ConditionalReads(lambda: client)
    head = GitHubBranches(reads, INSTALLATION_ID, REPO).resolve("HEAD")
    assert head is not None and len(head.sha) == 40
    PullRequestPass(db=db, cipher=cipher, reads=reads, preview_ttl=0, timeout=120).run()
    assert reads.requests >= 3

    found = violations(log_path)
    assert found == [], "Prism found requests GitHub's spec does not allow:\n" + "\n".join(found)
    assert "POST" in log_path.read_text(errors="replace")
