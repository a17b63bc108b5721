"""Fixtures for the API tests.

In-process tests call :mod:`controller.runs` with a real database holding a deployed
version (``deployed``) and a runtime fake at our own ``Runtime`` boundary.
Real-server tests deploy a real task repository and talk HTTP, as a client would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from support import payloads
from support.repos import TaskRepo
from support.server import Server

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.projects import create_project
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.tables import Environment, Version

REPO = "octo-org/demo"


@dataclass
class Deployed:
    """Project ``demo`` whose production runs version ``20260101.1`` with task ``hello``."""

    database: Database
    production_key: str


@pytest.fixture
def deployed(database: Database) -> Deployed:
    cipher = Cipher([Fernet.generate_key().decode()])
    with database.transaction() as session:
        project = create_project(session, cipher, ref="demo", repo=REPO)
        env = session.execute(
            select(Environment).where(
                Environment.project_id == project.id, Environment.name == "production"
            )
        ).scalar_one()
        dep = request_deployment(
            session,
            project=project,
            environment=env,
            request=DeployRequest(sha="a" * 40, ref="refs/heads/main", source="git"),
        )
        version = Version(
            project_id=project.id,
            environment_id=env.id,
            deployment_id=dep.id,
            version="20260101.1",
            day="20260101",
            seq=1,
            sha="a" * 40,
            tasks=[{"id": "hello"}],
            source_path="/nonexistent/source",
            venv_path="/nonexistent/venv",
        )
        session.add(version)
        session.flush()
        env.current_version_id = version.id
        key = cipher.decrypt(env.secret_key_encrypted)
    return Deployed(database=database, production_key=key)


class Flow:
    """A real server with project ``demo`` on a real task repository."""

    def __init__(self, server: Server, repo: TaskRepo) -> None:
        self.server = server
        self.repo = repo
        payloads.require_node_modules()
        server.create_project("demo", repo=REPO, clone_url=str(repo.path))

    def deploy_push(self) -> dict[str, Any]:
        sha = self.repo.head()
        body = payloads.push(repo=REPO, ref="refs/heads/main", before="0" * 40, after=sha)
        assert self.server.deliver("push", body).status_code == 202
        return self._deployed(sha, "production")

    def deploy_preview(self, branch: str) -> dict[str, Any]:
        self.repo.checkout(branch, create=True)
        sha = self.repo.set_message(f"hello {branch}")
        body = payloads.pull_request(action="opened", repo=REPO, head_ref=branch, head_sha=sha)
        assert self.server.deliver("pull_request", body).status_code == 202
        return self._deployed(sha, "preview")

    def _deployed(self, sha: str, env: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for dep in self.server.deployments():
                if dep["sha"] == sha and dep["environment"] == env:
                    return dep
            return None

        dep = self.server.wait_for(find, timeout=60)
        final = self.server.wait_deployment(dep["id"])
        assert final["status"] == "deployed", f"{final}\n{self.server.log()}"
        return final


@pytest.fixture
def flow(server: Server, task_repo: TaskRepo) -> Flow:
    return Flow(server, task_repo)
