"""Queries on preview environments: the project page's page of them, the resync's open
pull request previews, and the previews idle past their time to live. Callers own the
session; these only read."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from controller.store.sql import one_of
from controller.store.tables import Deployment, Environment, Project


def preview_counts_by_status(session: Session, project_id: int) -> dict[str, int]:
    """The number of the project's preview branches in each status."""
    rows = session.execute(
        select(Environment.status, func.count())
        .where(Environment.project_id == project_id, Environment.name == "preview")
        .where(Environment.branch.is_not(None))
        .group_by(Environment.status)
    ).all()
    return {status: count for status, count in rows}


def previews_page(
    session: Session, project_id: int, *, limit: int, offset: int
) -> list[Environment]:
    """One page of the project's preview branches: active first, then by branch."""
    return list(
        session.execute(
            select(Environment)
            .where(Environment.project_id == project_id, Environment.name == "preview")
            .where(Environment.branch.is_not(None))
            .order_by(case((Environment.status == "active", 0), else_=1), Environment.branch)
            .limit(limit)
            .offset(offset)
        ).scalars()
    )


def open_pull_request_previews(session: Session, project_ids: Collection[int]) -> list[Environment]:
    """The active previews of a pull request, of any of ``project_ids``."""
    return list(
        session.execute(
            select(Environment).where(
                one_of(Environment.project_id, project_ids),
                Environment.name == "preview",
                Environment.status == "active",
                Environment.pr_number.is_not(None),
                Environment.branch.is_not(None),
            )
        ).scalars()
    )


def newest_deployment_at(session: Session, environment_id: int) -> datetime | None:
    """When the environment's newest deployment was created (``None``: it has none)."""
    return session.execute(
        select(func.max(Deployment.created_at)).where(Deployment.environment_id == environment_id)
    ).scalar()


def idle_previews(session: Session, *, before: datetime) -> list[tuple[Environment, Project]]:
    """Active preview branches with no deployment (or, with none, no creation) since
    ``before``, with their project."""
    newest = (
        select(func.max(Deployment.created_at))
        .where(Deployment.environment_id == Environment.id)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Environment, Project)
        .join(Project, Project.id == Environment.project_id)
        .where(
            Environment.name == "preview",
            Environment.status == "active",
            Environment.branch.is_not(None),
            func.coalesce(newest, Environment.created_at) < before,
        )
    ).all()
    return [(env, project) for env, project in rows]
