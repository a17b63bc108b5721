"""Queries on deployments and the jobs that carry them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.models import ACTIVE_STATUSES
from controller.store.tables import Deployment, Job


def active_deployment_count(session: Session, environment_id: int) -> int:
    return session.execute(
        select(func.count()).where(
            Deployment.environment_id == environment_id,
            Deployment.status.in_(ACTIVE_STATUSES),
        )
    ).scalar_one()


def attempted_deployment(session: Session, environment_id: int, sha: str) -> Deployment | None:
    """The oldest deployment of commit ``sha`` to the environment, in any status."""
    return session.execute(
        select(Deployment)
        .where(Deployment.environment_id == environment_id, Deployment.sha == sha)
        .order_by(Deployment.created_at)
        .limit(1)
    ).scalar_one_or_none()


def orphaned_queued_deployments(session: Session) -> list[Deployment]:
    """Queued deployments with no live job (their job was lost or failed): resync fodder."""
    live = select(Job.deployment_id).where(
        Job.deployment_id.is_not(None), Job.status.in_(("queued", "running"))
    )
    return list(
        session.execute(
            select(Deployment).where(
                Deployment.status.in_(ACTIVE_STATUSES), Deployment.id.not_in(live)
            )
        ).scalars()
    )


def last_job_of(session: Session, deployment_id: str) -> Job | None:
    return session.execute(
        select(Job).where(Job.deployment_id == deployment_id).order_by(Job.id.desc()).limit(1)
    ).scalar_one_or_none()


def deploying_version_ids(session: Session) -> set[int]:
    """Versions that a deployment in progress is starting (not to be stopped)."""
    rows = session.execute(
        select(Deployment.version_id).where(
            Deployment.status == "deploying", Deployment.version_id.is_not(None)
        )
    ).scalars()
    return {version_id for version_id in rows if version_id is not None}
