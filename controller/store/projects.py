"""Queries on projects and the repositories they deploy from. Callers own the session
(and so the transaction); these only read."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.store.sql import one_of
from controller.store.tables import Deployment, Environment, Project, Repository, Run


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


def connected_projects(session: Session) -> list[Project]:
    return list(
        session.execute(
            select(Project).where(Project.disconnected_at.is_(None)).order_by(Project.id)
        ).scalars()
    )


def installations_by_repo(session: Session) -> dict[str, int]:
    """``owner/name`` lowercased → the installation that reaches it, for every repository
    an installation reaches."""
    rows = session.execute(
        select(Repository.full_name_lower, Repository.installation_id).where(
            Repository.installation_id.is_not(None)
        )
    ).all()
    return {name: installation for name, installation in rows if installation is not None}


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


def repo_of_project(session: Session, ref: str) -> str | None:
    return session.execute(select(Project.repo).where(Project.ref == ref)).scalar_one_or_none()


def repo_of_deployment(session: Session, deployment_id: str) -> str | None:
    return session.execute(
        select(Project.repo)
        .join(Deployment, Deployment.project_id == Project.id)
        .where(Deployment.id == deployment_id)
    ).scalar_one_or_none()


def repo_of_run(session: Session, run_id: str) -> str | None:
    return session.execute(
        select(Project.repo)
        .join(Environment, Environment.project_id == Project.id)
        .join(Run, Run.environment_id == Environment.id)
        .where(Run.id == run_id)
    ).scalar_one_or_none()


def project_refs(session: Session, ids: set[int]) -> dict[int, str]:
    """Project id → its ref, for the ids that exist."""
    if not ids:
        return {}
    rows = session.execute(select(Project.id, Project.ref).where(one_of(Project.id, ids))).all()
    return {pid: ref for pid, ref in rows}
