"""Queries on projects and the repositories they deploy from. Callers own the session
(and so the transaction); these only read."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.store.tables import Project, Repository


def project_by_ref(session: Session, ref: str) -> Project | None:
    return session.execute(select(Project).where(Project.ref == ref)).scalar_one_or_none()


def all_projects(session: Session) -> list[Project]:
    return list(session.execute(select(Project).order_by(Project.ref)).scalars())


def projects_of_repo(session: Session, repo_lower: str) -> list[Project]:
    """The projects deploying ``repo_lower`` (an ``owner/name`` lowercased), oldest first."""
    return list(
        session.execute(
            select(Project).where(Project.repo_lower == repo_lower).order_by(Project.id)
        ).scalars()
    )


def connected_projects_with_clone_url(session: Session) -> list[Project]:
    return list(
        session.execute(
            select(Project)
            .where(Project.disconnected_at.is_(None), Project.clone_url.is_not(None))
            .order_by(Project.id)
        ).scalars()
    )


def repository_by_name(session: Session, full_name_lower: str) -> Repository | None:
    return session.execute(
        select(Repository).where(Repository.full_name_lower == full_name_lower)
    ).scalar_one_or_none()


def repositories_of_installation(session: Session, installation_id: int) -> list[Repository]:
    return list(
        session.execute(
            select(Repository).where(Repository.installation_id == installation_id)
        ).scalars()
    )
