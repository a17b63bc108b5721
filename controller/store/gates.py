"""Queries of promotion gates: waiting deployments, the signals recorded for a commit,
the decisions queued, and the locks the gate's promotion takes.

The promotion's locks (:func:`hold_environment_for_promotion`, :func:`lock_deployment`)
are ``FOR NO KEY UPDATE`` on PostgreSQL and are taken environment first, deployment
second — the order a routed request takes them (its environment lock, then the waiting
deployment it supersedes). A request made through the API locks the deployment first,
then inserts its own, whose foreign key takes a ``KEY SHARE`` lock on the environment:
``NO KEY UPDATE`` lets that through, so neither order deadlocks. SQLite's write
transactions are serial already (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.models import WAITING
from controller.store.tables import CommitSignal, Deployment, Environment, Job, Project, Repository


def open_decision_payloads(session: Session, deployment_id: str, *, kind: str) -> list[dict[str, Any]]:  # fmt: skip
    """The payloads of the deployment's ``kind`` jobs that are queued or running."""
    rows = session.execute(
        select(Job.payload).where(
            Job.deployment_id == deployment_id,
            Job.kind == kind,
            Job.status.in_(("queued", "running")),
        )
    ).scalars()
    return [dict(payload or {}) for payload in rows]


def waiting_deployments_with_repo(
    session: Session, *, repo_lower: str | None = None, sha: str | None = None
) -> list[tuple[Deployment, str]]:
    """Gated deployments that wait, oldest first, each with its project's repository."""
    query = (
        select(Deployment, Project.repo)
        .join(Project, Project.id == Deployment.project_id)
        .where(Deployment.status == WAITING, Deployment.gate.is_not(None))
    )
    if repo_lower is not None:
        query = query.where(Project.repo_lower == repo_lower)
    if sha is not None:
        query = query.where(Deployment.sha == sha)
    rows = session.execute(query.order_by(Deployment.created_at)).all()
    return [(dep, repo) for dep, repo in rows]


def signals_of_commit(session: Session, *, repo_lower: str, sha: str) -> list[CommitSignal]:
    return list(
        session.execute(
            select(CommitSignal).where(
                CommitSignal.repo_lower == repo_lower, CommitSignal.sha == sha
            )
        ).scalars()
    )


def signal_known(session: Session, *, kind: str, github_id: int, state: str) -> bool:
    """Whether GitHub's ``kind`` object ``github_id`` was already recorded in ``state``."""
    found = session.execute(
        select(CommitSignal.id).where(
            CommitSignal.kind == kind,
            CommitSignal.github_id == github_id,
            CommitSignal.state == state,
        )
    ).first()
    return found is not None


def installation_of_repo(session: Session, repo: str) -> int | None:
    return session.execute(
        select(Repository.installation_id).where(Repository.full_name_lower == repo.lower())
    ).scalar_one_or_none()


def hold_environment_for_promotion(session: Session, environment_id: int) -> None:
    """Lock the environment's row against a routed request for the rest of the
    transaction (``FOR NO KEY UPDATE``: inserts that reference it still go through)."""
    session.execute(
        select(Environment.id)
        .where(Environment.id == environment_id)
        .with_for_update(key_share=True)
    )


def lock_deployment(session: Session, deployment_id: str) -> Deployment | None:
    """The deployment as last committed, its row locked for the rest of the transaction."""
    return session.execute(
        select(Deployment)
        .where(Deployment.id == deployment_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def newer_request(
    session: Session, *, environment_id: int, deployment_id: str, created_at: datetime
) -> Deployment | None:
    """The newest deployment of the environment requested after ``created_at`` that was
    not itself superseded (a collapsed push records one that never ran)."""
    return session.execute(
        select(Deployment)
        .where(
            Deployment.environment_id == environment_id,
            Deployment.id != deployment_id,
            Deployment.created_at > created_at,
            Deployment.status != "superseded",
        )
        .order_by(Deployment.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
