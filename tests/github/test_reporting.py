"""The reporter against the fake GitHub (every request validated against GitHub's spec).

Deployments are made and moved through their statuses in the database, as the pipeline
would; each :meth:`Reporter.run` pass must bring GitHub in line: one Deployment whose
statuses follow, one check run, one comment per pull request, and nothing duplicated
after a crash between a create and its record. A GitHub outage only delays.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from support.fake_github import Failure, FakeGitHub

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import archive_branch, ensure_environment
from controller.domain.events import record_event
from controller.domain.projects import create_project
from controller.github.client import AppClient
from controller.github.reporting import Reporter
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.tables import (
    Deployment,
    GitHubReport,
    Project,
    Repository,
    Version,
    utcnow,
)

INSTALLATION_ID = 5151
REPO = "octo-org/private-tasks"
SHA = "c" * 40
PUBLIC = "https://slipway.example.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cipher() -> Cipher:
    return Cipher([Fernet.generate_key().decode()])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reporter(database: Database, fake_github: FakeGitHub, clock: Clock) -> Reporter:
    client = AppClient(
        app_id=fake_github.app_id, private_key=fake_github.private_key, api_url=fake_github.url
    )
    return Reporter(db=database, client_for=lambda: client, public_url=PUBLIC, clock=clock)


@pytest.fixture
def project_id(database: Database, cipher: Cipher) -> int:
    with database.transaction() as session:
        project = create_project(session, cipher, ref="demo", repo=REPO)
        session.add(
            Repository(
                full_name=REPO,
                full_name_lower=REPO.lower(),
                installation_id=INSTALLATION_ID,
                clone_url="https://example.invalid/x.git",
            )
        )
        return project.id


@pytest.fixture
def deploy(database: Database, cipher: Cipher, project_id: int) -> Callable[..., str]:
    def make(
        env: str = "production", *, branch: str | None = None, sha: str = SHA, pr: int | None = None
    ) -> str:
        with database.transaction() as session:
            project = session.get(Project, project_id)
            assert project is not None
            extra: dict[str, Any] = {"pr_number": pr} if pr else {}
            environment = ensure_environment(
                session, cipher, project=project, name=env, branch=branch, **extra
            )
            dep = request_deployment(
                session,
                project=project,
                environment=environment,
                request=DeployRequest(sha=sha, ref="refs/heads/main", source="push", pr_number=pr),
            )
            return dep.id

    return make


def set_status(database: Database, deployment_id: str, status: str, **fields: Any) -> None:
    with database.transaction() as session:
        dep = session.get(Deployment, deployment_id)
        assert dep is not None
        dep.status = status
        for name, value in fields.items():
            setattr(dep, name, value)
        if status == "deployed":
            seq = 1 + session.query(Version).filter_by(environment_id=dep.environment_id).count()
            session.add(
                Version(
                    project_id=dep.project_id,
                    environment_id=dep.environment_id,
                    deployment_id=dep.id,
                    version=f"20261201.{seq}",
                    day="20261201",
                    seq=seq,
                    sha=dep.sha,
                    tasks=[{"id": "hello"}],
                    source_path="/x",
                    venv_path="/y",
                )
            )


def states(fake: FakeGitHub, gh_id: int) -> list[str]:
    return [s["state"] for s in fake.deployment_statuses[gh_id]]


def test_a_deployment_is_reported_as_it_moves_and_ends_success(
    database: Database, fake_github: FakeGitHub, reporter: Reporter, deploy: Callable[..., str]
) -> None:
    dep_id = deploy()
    reporter.run()
    (gh,) = fake_github.deployments.values()
    assert gh["environment"] == "slipway/production" and gh["sha"] == SHA
    assert gh["production_environment"] is True and gh["transient_environment"] is False
    assert gh["payload"]["slipway_deployment"] == dep_id
    assert states(fake_github, gh["id"]) == ["queued"]
    reporter.run()  # nothing changed: nothing sent
    assert states(fake_github, gh["id"]) == ["queued"]

    set_status(database, dep_id, "building")
    reporter.run()
    set_status(database, dep_id, "deployed", finished_at=utcnow())
    reporter.run()
    reporter.run()
    assert states(fake_github, gh["id"]) == ["queued", "in_progress", "success"]
    final = fake_github.deployment_statuses[gh["id"]][-1]
    assert final["environment_url"] == f"{PUBLIC}/projects/demo/environments/production"
    assert final["log_url"] == f"{PUBLIC}/deployments/{dep_id}"
    (run,) = fake_github.check_runs.values()
    assert run["name"] == "Slipway (production)" and run["head_sha"] == SHA
    assert run["status"] == "completed" and run["conclusion"] == "success"
    assert "20261201.1" in run["output"]["summary"] and "`hello`" in run["output"]["summary"]
    with database.read() as session:
        row = session.get(GitHubReport, dep_id)
        assert row is not None and row.done
    assert len(fake_github.deployments) == 1


def test_a_broken_build_fails_with_the_failing_file_in_the_check_run(
    database: Database, fake_github: FakeGitHub, reporter: Reporter, deploy: Callable[..., str]
) -> None:
    dep_id = deploy("staging")
    set_status(
        database,
        dep_id,
        "failed",
        error="a task file failed to load: tasks/broken.py, line 3: SyntaxError: invalid syntax",
        finished_at=utcnow(),
    )
    reporter.run()
    (gh,) = fake_github.deployments.values()
    assert gh["environment"] == "slipway/staging"
    assert states(fake_github, gh["id"]) == ["failure"]
    (run,) = fake_github.check_runs.values()
    assert run["conclusion"] == "failure"
    assert "Failing file: `tasks/broken.py`, line 3" in run["output"]["text"]
    assert run["output"]["annotations"][0]["path"] == "tasks/broken.py"


def test_a_crash_between_create_and_record_duplicates_nothing(
    database: Database, fake_github: FakeGitHub, reporter: Reporter, deploy: Callable[..., str]
) -> None:
    dep_id = deploy()
    set_status(database, dep_id, "building")
    reporter.run()
    with database.transaction() as session:  # as if the records had never been written
        row = session.get(GitHubReport, dep_id)
        assert row is not None
        session.delete(row)
    set_status(database, dep_id, "deployed", finished_at=utcnow())
    reporter.run()
    assert len(fake_github.deployments) == 1
    assert len(fake_github.check_runs) == 1
    (gh,) = fake_github.deployments.values()
    assert states(fake_github, gh["id"]) == ["in_progress", "success"]
    assert next(iter(fake_github.check_runs.values()))["conclusion"] == "success"


def test_github_down_only_delays_and_backs_off(
    database: Database,
    fake_github: FakeGitHub,
    reporter: Reporter,
    deploy: Callable[..., str],
    clock: Clock,
) -> None:
    dep_id = deploy()
    fake_github.outage = 503
    reporter.run()
    asked = len(fake_github.requests)
    reporter.run()  # backed off: not asked again yet
    assert len(fake_github.requests) == asked
    set_status(database, dep_id, "deployed", finished_at=utcnow())
    fake_github.outage = None
    clock.now += 3600
    reporter.run()
    (gh,) = fake_github.deployments.values()
    assert states(fake_github, gh["id"]) == ["success"]
    with database.read() as session:
        assert session.get(Deployment, dep_id).status == "deployed"  # type: ignore[union-attr]


def test_a_pull_request_gets_one_comment_edited_and_inactive_after_close(
    database: Database,
    fake_github: FakeGitHub,
    reporter: Reporter,
    deploy: Callable[..., str],
    project_id: int,
) -> None:
    first = deploy("preview", branch="feature", pr=7)
    set_status(database, first, "deployed", finished_at=utcnow())
    reporter.run()
    (comment,) = fake_github.comments.values()
    assert (
        comment["number"] == 7 and "`feature`" in comment["body"] and "deployed" in comment["body"]
    )
    gh_first = next(iter(fake_github.deployments.values()))
    assert gh_first["environment"] == "slipway/preview/feature"
    assert gh_first["transient_environment"] is True

    second = deploy("preview", branch="feature", sha="d" * 40, pr=7)
    reporter.run()
    assert len(fake_github.comments) == 1 and comment["edits"] == 1
    assert "dddddddddddd" in comment["body"]
    set_status(database, second, "deployed", finished_at=utcnow())
    reporter.run()
    with database.transaction() as session:
        project = session.get(Project, project_id)
        assert project is not None
        archive_branch(session, project, "feature", "pull request #7 was closed")
    reporter.run()
    assert len(fake_github.comments) == 1 and "archived" in comment["body"]
    assert len(fake_github.deployments) == 2
    for gh in fake_github.deployments.values():
        assert states(fake_github, gh["id"])[-1] == "inactive"
    with database.read() as session:
        assert all(row.done for row in session.query(GitHubReport))
    edits = comment["edits"]
    reporter.run()
    assert comment["edits"] == edits


def test_a_fork_pull_request_without_a_preview_gets_a_comment_saying_why(
    database: Database, fake_github: FakeGitHub, reporter: Reporter, project_id: int
) -> None:
    with database.transaction() as session:
        record_event(
            session,
            project_id,
            "skipped",
            "no preview for pull request #9 (patch-1): it comes from the fork someone/"
            "private-tasks and fork previews are off for project demo",
            None,
        )
    reporter.run()
    reporter.run()
    (comment,) = fake_github.comments.values()
    assert comment["number"] == 9 and "comes from the fork someone/private-tasks" in comment["body"]
    assert fake_github.deployments == {}


def test_nothing_is_sent_without_an_installation(
    database: Database, fake_github: FakeGitHub, clock: Clock, cipher: Cipher
) -> None:
    client = AppClient(
        app_id=fake_github.app_id, private_key=fake_github.private_key, api_url=fake_github.url
    )
    reporter = Reporter(db=database, client_for=lambda: client, public_url=PUBLIC, clock=clock)
    with database.transaction() as session:
        project = create_project(session, cipher, ref="local", repo="me/local", clone_url="/srv/x")
        env = ensure_environment(session, cipher, project=project, name="production", branch=None)
        request_deployment(
            session,
            project=project,
            environment=env,
            request=DeployRequest(sha=SHA, ref="refs/heads/main", source="push"),
        )
    reporter.run()
    assert fake_github.requests == []
    assert Reporter(db=database, client_for=lambda: None, public_url=PUBLIC).run() is None


def test_a_rate_limit_waits_for_github_s_retry_after(
    database: Database,
    fake_github: FakeGitHub,
    reporter: Reporter,
    deploy: Callable[..., str],
    clock: Clock,
) -> None:
    deploy()
    limited = Failure(
        403,
        {"message": "You have exceeded a secondary rate limit."},
        {"Retry-After": "120"},
    )
    fake_github.fail_next("repos/list-deployments", limited)
    reporter.run()
    asked = len(fake_github.requests)
    clock.now += 100  # past our own backoff, not past GitHub's Retry-After
    reporter.run()
    assert len(fake_github.requests) == asked and fake_github.deployments == {}
    clock.now += 50
    reporter.run()
    assert len(fake_github.deployments) == 1


def test_a_waiting_deployment_names_its_gate_then_completes_as_its_outcome(
    database: Database, fake_github: FakeGitHub, reporter: Reporter, deploy: Callable[..., str]
) -> None:
    since = datetime(2026, 12, 1, 15, 0, 0)
    deadline = since + timedelta(seconds=40)
    gated = {"gate": "github-deployment:Production", "waiting_since": since}
    ended: dict[str, str] = {}
    for outcome in ("deployed", "timed_out", "superseded"):
        dep_id = deploy(sha=outcome[0] * 40)
        set_status(database, dep_id, "deploying")
        reporter.run()
        set_status(database, dep_id, "waiting", gate_deadline=deadline, **gated)
        reporter.run()
        reporter.run()  # nothing changed: nothing sent
        (gh,) = [d for d in fake_github.deployments.values() if d["sha"] == outcome[0] * 40]
        assert states(fake_github, gh["id"]) == ["in_progress", "in_progress"]
        description = fake_github.deployment_statuses[gh["id"]][-1]["description"]
        assert description == (
            "waiting for promotion gate github-deployment:Production until 2026-12-01 15:00:40 UTC"
        )
        (run,) = [r for r in fake_github.check_runs.values() if r["external_id"] == dep_id]
        assert run["status"] == "in_progress" and not run.get("conclusion")
        assert run["output"]["title"] == "Waiting for promotion gate github-deployment:Production"
        summary = run["output"]["summary"]
        assert f"GitHub deployment of {outcome[0] * 12} in GitHub environment Production" in summary
        assert "Since: 2026-12-01 15:00:00 UTC" in summary
        assert "Until: 2026-12-01 15:00:40 UTC" in summary

        error = "timed out: promotion gate github-deployment:Production did not pass within 40s"
        extra = {"error": error} if outcome == "timed_out" else {}
        set_status(database, dep_id, outcome, finished_at=utcnow(), **extra)
        reporter.run()
        reporter.run()
        assert run["status"] == "completed", outcome
        ended[outcome] = run["conclusion"]
        last = fake_github.deployment_statuses[gh["id"]][-1]
        if outcome == "timed_out":
            assert last["state"] == "error" and last["description"] == error
            assert run["output"]["title"] == "Promotion gate timed out"
            assert error in run["output"]["text"]
        with database.read() as session:
            row = session.get(GitHubReport, dep_id)
            assert row is not None and row.done
    assert ended == {"deployed": "success", "timed_out": "timed_out", "superseded": "cancelled"}
