"""The resync pass that gives lost deployments a job again (moved out of services.py)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, select, update

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import find_environment
from controller.domain.projects import get_project
from controller.reconcile.deployments import requeue_lost_deployments
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.tables import Deployment, Job


def _queued(database: Database, cipher: Cipher) -> str:
    with database.transaction() as session:
        project = get_project(session, "demo")
        env = find_environment(session, project, "production", None)
        request = DeployRequest(sha="a" * 40, ref="refs/heads/main", source="api")
        return request_deployment(session, project=project, environment=env, request=request).id


def test_a_deployment_that_lost_its_job_is_queued_again_and_one_that_gave_up_fails(
    database: Database, cipher: Cipher, make_project: Callable[..., int]
) -> None:
    make_project()
    lost = _queued(database, cipher)
    with database.transaction() as session:
        session.execute(delete(Job).where(Job.deployment_id == lost))
    notified: list[bool] = []
    requeue_lost_deployments(database, notify=lambda: notified.append(True))
    with database.read() as session:
        jobs = session.execute(select(Job).where(Job.deployment_id == lost)).scalars().all()
        assert [(j.kind, j.status) for j in jobs] == [("deploy", "queued")]
    assert notified == [True]

    with database.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.deployment_id == lost)
            .values(status="failed", last_error="no space left")
        )
    requeue_lost_deployments(database, notify=lambda: None)
    with database.read() as session:
        dep = session.get(Deployment, lost)
        assert dep is not None
        assert dep.status == "failed"
        assert dep.error == "gave up: no space left"
