"""Queries on deployments and the jobs that carry them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, func, select, update
from sqlalchemy.orm import Session

from controller.models import ACTIVE_STATUSES, WAITING
from controller.store.tables import (
    Deployment,
    DeploymentLog,
    DeploymentStep,
    Environment,
    Installation,
    Job,
    Project,
    Repository,
)


@dataclass(frozen=True)
class DeploymentState:
    """What a deployment under way re-checks between its phases: its own status, its
    environment's, and whether its project may still deploy."""

    status: str
    error: str | None
    started_at: datetime | None
    environment_status: str
    branch: str | None
    project_disconnected: bool
    repo: str
    repo_reachable: bool | None  # None: no repository record (not a GitHub App project)
    installation_suspended: bool | None
    installation_account: str | None
    installation_id: int | None


# One statement, built once: the pipeline runs it between every two phases, where three
# ORM loads and the repository and installation lookups took ~5x the CPU.
_STATE = (
    select(
        Deployment.status,
        Deployment.error,
        Deployment.started_at,
        Environment.status,
        Environment.branch,
        Project.disconnected_at.is_not(None),
        Project.repo,
        Repository.reachable,
        Installation.suspended,
        Installation.account,
        Installation.id,
    )
    .join(Environment, Environment.id == Deployment.environment_id)
    .join(Project, Project.id == Deployment.project_id)
    .outerjoin(Repository, Repository.full_name_lower == Project.repo_lower)
    .outerjoin(Installation, Installation.id == Repository.installation_id)
    .where(Deployment.id == bindparam("deployment_id"))
)


def deployment_state(session: Session, deployment_id: str) -> DeploymentState | None:
    row = session.execute(_STATE, {"deployment_id": deployment_id}).one_or_none()
    return DeploymentState(*row) if row is not None else None


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


def same_commit_in_progress(session: Session, environment_id: int, sha: str) -> Deployment | None:
    """The environment's newest deployment if it is of ``sha`` and still under way, waiting
    for its gate, or deployed: a new request for that commit would only repeat it. (An
    older deployment of the commit does not count: going back to a commit deploys it.)"""
    newest = session.execute(
        select(Deployment)
        .where(Deployment.environment_id == environment_id)
        .order_by(Deployment.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    if newest is None or newest.sha != sha:
        return None
    return newest if newest.status in {*ACTIVE_STATUSES, WAITING, "deployed"} else None


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


def recent_deployments(
    session: Session,
    project_id: int,
    *,
    environment_id: int | None = None,
    environment_name: str | None = None,
    branch: str | None = None,
    limit: int,
) -> list[Deployment]:
    """Newest first, of one environment (``environment_id``), of every environment named
    ``environment_name`` (all previews), or of every environment of ``branch``."""
    query = select(Deployment).where(Deployment.project_id == project_id)
    if environment_id is not None:
        query = query.where(Deployment.environment_id == environment_id)
    elif environment_name is not None or branch is not None:
        ids = select(Environment.id).where(Environment.project_id == project_id)
        if environment_name is not None:
            ids = ids.where(Environment.name == environment_name)
        else:
            ids = ids.where(Environment.branch == branch)
        query = query.where(Deployment.environment_id.in_(ids))
    query = query.order_by(Deployment.created_at.desc(), Deployment.id.desc()).limit(limit)
    return list(session.execute(query).scalars())


def deployment_steps(session: Session, deployment_id: str) -> list[DeploymentStep]:
    """In the order they were recorded."""
    return list(
        session.execute(
            select(DeploymentStep)
            .where(DeploymentStep.deployment_id == deployment_id)
            .order_by(DeploymentStep.id)
        ).scalars()
    )


def deployment_log_lines(
    session: Session, deployment_id: str, *, after: int, limit: int = 5000
) -> list[DeploymentLog]:
    """The lines after id ``after``, oldest first."""
    return list(
        session.execute(
            select(DeploymentLog)
            .where(DeploymentLog.deployment_id == deployment_id, DeploymentLog.id > after)
            .order_by(DeploymentLog.id)
            .limit(limit)
        ).scalars()
    )


def step_by_name(session: Session, deployment_id: str, name: str) -> DeploymentStep | None:
    return session.execute(
        select(DeploymentStep).where(
            DeploymentStep.deployment_id == deployment_id, DeploymentStep.name == name
        )
    ).scalar_one_or_none()


def mark_step_running(
    session: Session, deployment_id: str, name: str, *, attempts: int, started_at: datetime
) -> None:
    """Record that step ``name`` runs (attempt ``attempts``). Conditional in SQL: a step
    already ``done`` (an end committed meanwhile, by another thread) is left as it is."""
    updated = session.execute(
        update(DeploymentStep)
        .where(
            DeploymentStep.deployment_id == deployment_id,
            DeploymentStep.name == name,
            DeploymentStep.status != "done",
        )
        .values(status="running", attempts=attempts, started_at=started_at, error=None)
        .execution_options(synchronize_session=False)
    )
    if cast("CursorResult[Any]", updated).rowcount:
        return
    exists = session.execute(
        select(DeploymentStep.id).where(
            DeploymentStep.deployment_id == deployment_id, DeploymentStep.name == name
        )
    ).first()
    if exists is None:
        session.add(
            DeploymentStep(
                deployment_id=deployment_id,
                name=name,
                status="running",
                attempts=attempts,
                started_at=started_at,
            )
        )
