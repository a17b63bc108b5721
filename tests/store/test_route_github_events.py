"""Applying the GitHub events of issue 10: a deleted branch's preview, deployment statuses
and check runs recorded for promotion gates, and suspended installations. Real payloads,
routed through :func:`controller.routing.route_pending` into a real database."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from support import payloads

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import ensure_environment, find_environment
from controller.domain.projects import create_project, project_not_deploying_reason
from controller.routing import route_pending
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.deliveries import route_key
from controller.store.tables import (
    CommitSignal,
    Delivery,
    Deployment,
    Environment,
    Event,
    Job,
    Project,
)

REPO = "octo-org/demo"
SHA = "9b2c7e4f0a1d3c5e7f9b2c7e4f0a1d3c5e7f9b2c"
_ids = count()


@pytest.fixture
def cipher(database: Database) -> Cipher:
    payloads.require_node_modules()
    cipher = Cipher([Fernet.generate_key().decode()])
    with database.transaction() as session:
        create_project(session, cipher, ref="demo", repo=REPO, clone_url="/nowhere")
    return cipher


def deliver(database: Database, cipher: Cipher, event: str, payload: dict[str, Any]) -> str:
    delivery_id = f"d-{next(_ids)}"
    with database.transaction() as session:
        delivery = Delivery(
            delivery_id=delivery_id, event=event, repo_lower=REPO, body=json.dumps(payload).encode()
        )
        session.add(delivery)
        session.flush()
        session.add(
            Job(kind="route", key=route_key(REPO, delivery_id), payload={"delivery": delivery.id})
        )
    while route_pending(database, cipher, budget=30.0) is not None:
        pass
    with database.read() as session:
        outcome = session.execute(
            select(Delivery.outcome).where(Delivery.delivery_id == delivery_id)
        ).scalar_one()
    assert outcome is not None
    return str(outcome)


def project(session: Any) -> Project:
    return session.execute(select(Project).where(Project.ref == "demo")).scalar_one()


def test_deleting_a_branch_archives_its_preview(database: Database, cipher: Cipher) -> None:
    with database.transaction() as session:
        ensure_environment(
            session, cipher, project=project(session), name="preview", branch="feature/x"
        )
    outcome = deliver(database, cipher, "delete", payloads.delete(ref="feature/x"))
    assert "1 preview(s) archived" in outcome
    with database.read() as session:
        env = session.execute(
            select(Environment).where(Environment.branch == "feature/x")
        ).scalar_one()
        assert env.status == "archived"


def test_deployment_statuses_and_check_runs_are_recorded(
    database: Database, cipher: Cipher
) -> None:
    status = payloads.deployment_status(sha=SHA, environment="vercel", state="success")
    check = payloads.check_run(sha=SHA, name="tests", conclusion="failure")
    deliver(database, cipher, "deployment_status", status)
    deliver(database, cipher, "check_run", check)
    with database.read() as session:
        rows = session.execute(select(CommitSignal).order_by(CommitSignal.id)).scalars().all()
        got = [(r.kind, r.repo_lower, r.sha, r.name, r.state, r.github_id) for r in rows]
    assert got == [
        ("deployment_status", REPO, SHA, "vercel", "success", status["deployment_status"]["id"]),
        ("check_run", REPO, SHA, "tests", "failure", check["check_run"]["id"]),
    ]
    assert rows[0].deployment_id == status["deployment"]["id"] and rows[0].url
    assert rows[1].delivery_id is not None


def test_a_suspended_installation_stops_deploying_until_unsuspended(
    database: Database, cipher: Cipher
) -> None:
    deliver(database, cipher, "installation", payloads.installation(action="created", repos=[REPO]))
    with database.transaction() as session:
        demo = project(session)
        env = find_environment(session, demo, "production", None)
        queued = request_deployment(
            session,
            project=demo,
            environment=env,
            request=DeployRequest(sha=SHA, ref="refs/heads/main", source="push"),
        ).id

    # GitHub's suspend and unsuspend payloads list no repositories.
    deliver(database, cipher, "installation", payloads.installation(action="suspend", repos=[]))
    with database.read() as session:
        reason = project_not_deploying_reason(session, project(session))
        assert reason is not None and "suspended" in reason
        assert session.get(Deployment, queued).status == "canceled"  # type: ignore[union-attr]
        events = session.execute(select(Event.message).where(Event.kind == "access")).scalars()
        assert any("suspended" in m for m in events)
    push = payloads.push(repo=REPO, before="0" * 40, after="1" * 40)
    assert "skipped" in deliver(database, cipher, "push", push)

    deliver(database, cipher, "installation", payloads.installation(action="unsuspend", repos=[]))
    with database.read() as session:
        assert project_not_deploying_reason(session, project(session)) is None
    push = payloads.push(repo=REPO, before="1" * 40, after="2" * 40)
    assert "deploy 2222222 to production" in deliver(database, cipher, "push", push)


def preview_deployments(database: Database) -> list[tuple[str, str]]:
    with database.read() as session:
        rows = session.execute(
            select(Deployment.sha, Deployment.status)
            .join(Environment, Environment.id == Deployment.environment_id)
            .where(Environment.name == "preview")
            .order_by(Deployment.created_at, Deployment.id)
        ).all()
    return [(sha, status) for sha, status in rows]


def test_a_pull_request_event_for_a_commit_already_under_way_is_not_deployed_again(
    database: Database, cipher: Cipher
) -> None:
    """The resync lists open pull requests too: the late delivery of a commit it already
    requested (or a repeated event) must not supersede that deployment with a copy."""
    other = "1" * 40
    deliver(database, cipher, "pull_request", payloads.pull_request(action="opened", head_sha=SHA))
    deliver(
        database, cipher, "pull_request", payloads.pull_request(action="synchronize", head_sha=SHA)
    )
    assert preview_deployments(database) == [(SHA, "queued")]
    with database.read() as session:
        skipped = session.execute(select(Event.message).where(Event.kind == "skipped")).scalars()
        assert any("is already queued" in m for m in skipped)
    # Another commit supersedes it; going back to the first commit deploys it again.
    deliver(
        database, cipher, "pull_request", payloads.pull_request(action="synchronize", head_sha=other)
    )
    deliver(
        database, cipher, "pull_request", payloads.pull_request(action="synchronize", head_sha=SHA)
    )
    assert [sha for sha, _ in preview_deployments(database)] == [SHA, other, SHA]
