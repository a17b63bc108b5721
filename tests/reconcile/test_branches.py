"""The branch pass: a tracked branch's new head is requested once, through the same
function a routed push uses; a source that fails or hangs changes nothing."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
from conftest import SHA_A, SHA_B, Sources
from sqlalchemy import select
from support import payloads

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import find_environment
from controller.domain.projects import get_project
from controller.errors import SourceNotFound, SourceUnavailable
from controller.reconcile.branches import BranchPass
from controller.routing import route_pending
from controller.secretstore.crypto import Cipher
from controller.sources.base import Resolved
from controller.store.db import Database
from controller.store.deliveries import route_key
from controller.store.tables import (
    Delivery,
    Deployment,
    Environment,
    Event,
    Job,
    Project,
    Repository,
    utcnow,
)

REPO = "octo-org/demo"


def deployments(db: Database) -> list[Deployment]:
    with db.read() as session:
        return list(session.execute(select(Deployment).order_by(Deployment.created_at)).scalars())


def where(db: Database, dep: Deployment) -> str:
    with db.read() as session:
        env = session.get(Environment, dep.environment_id)
        assert env is not None
        return env.name


def queue_push(db: Database, sha: str, *, delivery_id: str, default_branch: str = "main") -> None:
    payloads.require_node_modules()
    body = payloads.push(repo=REPO, before="0" * 40, after=sha, default_branch=default_branch)
    with db.transaction() as session:
        delivery = Delivery(
            delivery_id=delivery_id, event="push", repo_lower=REPO, body=json.dumps(body).encode()
        )
        session.add(delivery)
        session.flush()
        session.add(
            Job(kind="route", key=route_key(REPO, delivery_id), payload={"delivery": delivery.id})
        )


def route_all(db: Database, cipher: Cipher) -> None:
    while route_pending(db, cipher, budget=30.0) is not None:
        pass


def test_a_new_head_of_the_default_branch_is_requested_once(
    database: Database,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
) -> None:
    make_project()
    sources["demo"].point("main", SHA_A, default=True)

    (requested,) = branch_pass.run()

    (dep,) = deployments(database)
    assert dep.id == requested
    assert (dep.sha, dep.ref, dep.source, dep.status) == (
        SHA_A,
        "refs/heads/main",
        "resync",
        "queued",
    )
    assert dep.delivery_id is None
    assert where(database, dep) == "production"
    with database.read() as session:
        job = session.execute(select(Job).where(Job.deployment_id == dep.id)).scalar_one()
        assert (job.kind, job.status) == ("deploy", "queued")
    assert sources["demo"].asked == ["HEAD"]  # no production branch recorded: ask HEAD

    assert branch_pass.run() == []  # the same head again: nothing
    sources["demo"].point("main", SHA_B, default=True)
    (second,) = branch_pass.run()
    assert [d.sha for d in deployments(database)] == [SHA_A, SHA_B]
    first = next(d for d in deployments(database) if d.sha == SHA_A)
    assert first.status == "superseded"  # newest wins, as for pushes
    assert second in (first.error or "")


def test_production_and_staging_branches_are_tracked(
    database: Database,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
) -> None:
    make_project(production_branch="release", staging_branch="develop")
    sources["demo"].point("release", SHA_A)
    sources["demo"].point("develop", SHA_B)
    sources["demo"].point("main", "c" * 40, default=True)  # not tracked

    assert len(branch_pass.run()) == 2

    found = {(where(database, d), d.sha, d.ref) for d in deployments(database)}
    assert found == {
        ("production", SHA_A, "refs/heads/release"),
        ("staging", SHA_B, "refs/heads/develop"),
    }
    assert sorted(sources["demo"].asked) == ["refs/heads/develop", "refs/heads/release"]


def test_one_branch_for_both_environments_is_asked_once(
    database: Database,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
) -> None:
    make_project(production_branch="main", staging_branch="main")
    sources["demo"].point("main", SHA_A)
    assert len(branch_pass.run()) == 2
    assert sources["demo"].asked == ["refs/heads/main"]


@pytest.mark.parametrize(
    "status", ["queued", "building", "deployed", "failed", "canceled", "superseded"]
)
def test_a_commit_already_attempted_in_any_status_is_not_requested_again(
    database: Database,
    cipher: Cipher,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
    status: str,
) -> None:
    make_project()
    with database.transaction() as session:
        project = get_project(session, "demo")
        env = find_environment(session, project, "production", None)
        dep = request_deployment(
            session,
            project=project,
            environment=env,
            request=DeployRequest(sha=SHA_A, ref="refs/heads/main", source="push"),
        )
        dep.status = status
    sources["demo"].point("main", SHA_A, default=True)

    assert branch_pass.run() == []
    assert len(deployments(database)) == 1


def test_a_late_delivery_for_a_commit_the_resync_deployed_adds_nothing(
    database: Database,
    cipher: Cipher,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
) -> None:
    make_project()
    sources["demo"].point("main", SHA_A, default=True)
    (requested,) = branch_pass.run()

    queue_push(database, SHA_A, delivery_id="late-1")
    route_all(database, cipher)

    assert [d.id for d in deployments(database)] == [requested]
    with database.read() as session:
        delivery = session.execute(
            select(Delivery).where(Delivery.delivery_id == "late-1")
        ).scalar_one()
        assert delivery.processed_at is not None
        (event,) = session.execute(select(Event).where(Event.delivery_id == "late-1")).scalars()
    assert event.kind == "skipped"
    assert requested in event.message and "once per environment" in event.message


def test_a_late_delivery_in_a_batch_records_no_superseded_twin(
    database: Database,
    cipher: Cipher,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
) -> None:
    """Collapsed pushes are recorded as superseded, but not for a commit already tried."""
    make_project()
    sources["demo"].point("main", SHA_A, default=True)
    branch_pass.run()
    for n, sha in enumerate([SHA_A, SHA_B]):
        queue_push(database, sha, delivery_id=f"batch-{n}")
    route_all(database, cipher)
    assert sorted(d.sha or "" for d in deployments(database)) == [SHA_A, SHA_B]


def test_the_resync_after_a_delivery_adds_nothing(
    database: Database,
    cipher: Cipher,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
) -> None:
    make_project()
    queue_push(database, SHA_A, delivery_id="on-time")
    route_all(database, cipher)
    sources["demo"].point("main", SHA_A, default=True)

    assert branch_pass.run() == []
    (dep,) = deployments(database)
    assert (dep.source, dep.delivery_id) == ("push", "on-time")


def test_a_delivery_records_the_default_branch_the_resync_then_follows(
    database: Database,
    cipher: Cipher,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
) -> None:
    make_project()
    queue_push(database, SHA_A, delivery_id="d-1", default_branch="trunk")
    route_all(database, cipher)
    with database.read() as session:
        assert get_project(session, "demo").default_branch == "trunk"
    sources["demo"].point("trunk", SHA_B)
    sources["demo"].point("other", "c" * 40, default=True)

    (requested,) = branch_pass.run()
    assert sources["demo"].asked == ["refs/heads/trunk"]
    with database.read() as session:
        dep = session.get(Deployment, requested)
        assert dep is not None and dep.sha == SHA_B


@pytest.mark.parametrize(
    "failure",
    [
        SourceUnavailable("could not ask octo-org/demo for HEAD: connection refused"),
        SourceNotFound("repository octo-org/demo not found or not accessible"),
        RuntimeError("a bug in some source"),
    ],
)
def test_a_source_that_fails_changes_nothing(
    database: Database,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
) -> None:
    make_project(staging_branch="develop")
    sources["demo"].heads["HEAD"] = failure
    sources["demo"].point("develop", SHA_B)
    with database.read() as session:
        before = {
            e.id: (e.status, e.current_version_id)
            for e in session.execute(select(Environment)).scalars()
        }

    with caplog.at_level(logging.WARNING, logger="controller.reconcile"):
        requested = branch_pass.run()

    (dep,) = deployments(database)  # staging still deploys; production is untouched
    assert requested == [dep.id] and where(database, dep) == "staging"
    with database.read() as session:
        after = {
            e.id: (e.status, e.current_version_id)
            for e in session.execute(select(Environment)).scalars()
        }
        assert session.execute(select(Event)).scalars().all() == []
    assert after == before
    (line,) = [r.getMessage() for r in caplog.records]
    assert "HEAD of project demo" in line and "nothing changes" in line


def test_a_branch_missing_at_the_source_is_left_alone(
    database: Database,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
) -> None:
    make_project(staging_branch="develop")
    sources["demo"].point("main", SHA_A, default=True)  # no develop
    assert len(branch_pass.run()) == 1
    assert [where(database, d) for d in deployments(database)] == ["production"]


def test_uploaded_disconnected_and_unreachable_projects_are_not_asked(
    database: Database,
    make_project: Callable[..., int],
    sources: Sources,
    branch_pass: BranchPass,
) -> None:
    make_project("uploads", repo="octo-org/uploads", clone_url=None)
    make_project("gone", repo="octo-org/gone")
    make_project("lost", repo="octo-org/lost")
    with database.transaction() as session:
        get_project(session, "gone").disconnected_at = utcnow()
        session.add(
            Repository(full_name="octo-org/lost", full_name_lower="octo-org/lost", reachable=False)
        )
    for ref in ("uploads", "gone", "lost"):
        sources[ref].point("main", SHA_A, default=True)

    assert branch_pass.run() == []
    assert sources.asked_for == []
    assert deployments(database) == []


def test_a_project_changed_while_resolving_is_not_deployed(
    database: Database, cipher: Cipher, make_project: Callable[..., int]
) -> None:
    make_project()

    class Disconnecting:
        name = "demo"

        def resolve(self, ref: str) -> Resolved | None:
            with database.transaction() as session:
                session.execute(select(Project)).scalar_one().disconnected_at = utcnow()
            return Resolved("refs/heads/main", SHA_A)

    passes = BranchPass(db=database, cipher=cipher, source_for=lambda repo: Disconnecting())
    assert passes.run() == []
    assert deployments(database) == []


def test_one_environment_failing_to_request_leaves_the_others_to_go_on(
    database: Database,
    cipher: Cipher,
    make_project: Callable[..., int],
    sources: Sources,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_project("bad")
    make_project("good", repo="octo-org/good")
    sources["bad"].point("main", SHA_A, default=True)
    sources["good"].point("main", SHA_B, default=True)

    class Flaky(BranchPass):
        def request(self, target, head):  # type: ignore[no-untyped-def]
            if target.project_ref == "bad":
                raise RuntimeError("database went away")
            return super().request(target, head)

    passes = Flaky(db=database, cipher=cipher, source_for=sources)
    with caplog.at_level(logging.ERROR, logger="controller.reconcile"):
        (requested,) = passes.run()
    (dep,) = deployments(database)
    assert dep.id == requested and dep.sha == SHA_B
    assert "requesting HEAD of bad failed" in caplog.text
