"""Reconcile from GitHub: the branch and pull request passes against the fake GitHub.

A lost push is deployed by one pass; a missed pull request gets its preview; a preview
whose pull request closed unheard is archived — but never while GitHub answers 5xx; an
unchanged repository costs only 304s; a preview idle past ``SLIPWAY_PREVIEW_TTL`` goes.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from support.fake_github import FakeGitHub, pull_request

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import ensure_environment
from controller.domain.projects import create_project
from controller.github.client import AppClient
from controller.reconcile import git_sources
from controller.reconcile.branches import BranchPass
from controller.reconcile.github import ConditionalReads, PullRequestPass
from controller.secretstore.crypto import Cipher
from controller.sources.base import RefResolver
from controller.store.db import Database
from controller.store.tables import Deployment, Environment, Project, Repository, utcnow

INSTALLATION_ID = 5151
REPO = "octo-org/private-tasks"
SHA = "a" * 40
PR_SHA = "b" * 40


class NoGit:
    def resolve(self, ref: str, **_: object) -> None:
        raise AssertionError("a GitHub-connected project is never asked with git ls-remote")


@pytest.fixture
def cipher() -> Cipher:
    return Cipher([Fernet.generate_key().decode()])


@pytest.fixture
def reads(fake_github: FakeGitHub) -> ConditionalReads:
    client = AppClient(
        app_id=fake_github.app_id, private_key=fake_github.private_key, api_url=fake_github.url
    )
    return ConditionalReads(lambda: client)


@pytest.fixture
def project_id(database: Database, cipher: Cipher) -> int:
    with database.transaction() as session:
        project = create_project(session, cipher, ref="demo", repo=REPO, production_branch="main")
        session.add(
            Repository(
                full_name=REPO,
                full_name_lower=REPO.lower(),
                installation_id=INSTALLATION_ID,
                clone_url="https://example.invalid/x.git",
            )
        )
        return project.id


def pulls_pass(
    database: Database, cipher: Cipher, reads: ConditionalReads, **kw: float
) -> PullRequestPass:
    return PullRequestPass(
        db=database,
        cipher=cipher,
        reads=reads,
        preview_ttl=kw.get("ttl", 0.0),
        timeout=60,
        settle=kw.get("settle", 0.0),
    )


def deployments(database: Database) -> list[Deployment]:
    with database.read() as session:
        return list(session.execute(select(Deployment).order_by(Deployment.created_at)).scalars())


def preview(database: Database, branch: str) -> Environment | None:
    with database.read() as session:
        return session.execute(
            select(Environment).where(Environment.branch_key == branch)
        ).scalar_one_or_none()


def test_a_lost_push_is_deployed_by_one_pass_and_an_unchanged_repo_costs_304s(
    database: Database,
    cipher: Cipher,
    fake_github: FakeGitHub,
    reads: ConditionalReads,
    project_id: int,
) -> None:
    fake_github.branches[REPO] = {"main": SHA}
    git: RefResolver = NoGit()  # type: ignore[assignment]
    branches = BranchPass(db=database, cipher=cipher, source_for=git_sources(git, github=reads))
    (requested,) = branches.run()
    (dep,) = deployments(database)
    assert dep.id == requested and dep.sha == SHA and dep.source == "resync"
    assert branches.run() == []
    assert fake_github.not_modified == 1 and reads.not_modified == 1


def test_a_missed_pull_request_gets_its_preview_and_a_fork_does_not(
    database: Database,
    cipher: Cipher,
    fake_github: FakeGitHub,
    reads: ConditionalReads,
    project_id: int,
) -> None:
    fake_github.pulls[REPO] = [
        pull_request(repo=REPO, number=7, branch="feature", sha=PR_SHA),
        pull_request(repo=REPO, number=8, branch="patch-1", sha="c" * 40, fork_of="someone/x"),
    ]
    requested, archived = pulls_pass(database, cipher, reads).run()
    assert len(requested) == 1 and archived == []
    (dep,) = deployments(database)
    assert dep.sha == PR_SHA and dep.pr_number == 7
    env = preview(database, "feature")
    assert env is not None and env.pr_number == 7 and env.status == "active"
    assert preview(database, "patch-1") is None
    assert pulls_pass(database, cipher, reads).run() == ([], [])  # attempted: not again
    assert reads.not_modified >= 1


def test_a_closed_pull_request_is_archived_but_never_on_an_error(
    database: Database,
    cipher: Cipher,
    fake_github: FakeGitHub,
    reads: ConditionalReads,
    project_id: int,
) -> None:
    fake_github.pulls[REPO] = [pull_request(repo=REPO, number=7, branch="feature", sha=PR_SHA)]
    pulls_pass(database, cipher, reads).run()
    fake_github.pulls[REPO] = []
    # Deployed moments ago: its delivery may be newer than GitHub's list.
    assert pulls_pass(database, cipher, reads, settle=300).run() == ([], [])
    for status in (503, 502, 500):
        fake_github.outage = status
        assert pulls_pass(database, cipher, reads).run() == ([], [])
    fake_github.outage = None
    env = preview(database, "feature")
    assert env is not None and env.status == "active"
    _, archived = pulls_pass(database, cipher, reads).run()
    env = preview(database, "feature")
    assert env is not None and archived == [env.id] and env.status == "archived"
    assert "no longer open" in (env.status_reason or "")


def test_a_preview_without_deployments_for_the_ttl_is_archived(
    database: Database, cipher: Cipher, reads: ConditionalReads, project_id: int
) -> None:
    with database.transaction() as session:
        project = session.get(Project, project_id)
        assert project is not None
        for branch, age in (("old", timedelta(days=8)), ("fresh", timedelta(hours=1))):
            env = ensure_environment(
                session, cipher, project=project, name="preview", branch=branch
            )
            dep = request_deployment(
                session,
                project=project,
                environment=env,
                request=DeployRequest(sha=SHA, ref=f"refs/heads/{branch}", source="upload"),
            )
            dep.created_at = utcnow() - age
    no_github = ConditionalReads(lambda: None)
    _, archived = pulls_pass(database, cipher, no_github, ttl=7 * 86400).run()
    old, fresh = preview(database, "old"), preview(database, "fresh")
    assert old is not None and fresh is not None
    assert archived == [old.id] and old.status == "archived" and fresh.status == "active"
