"""Queries on projects whose repository a GitHub App installation reaches.

The reporter, the comments and the resync all start from "projects joined to their
repository, where an installation reaches it"; :func:`with_installed_repository` is that
join, written once, for any select that names :class:`Project`.
"""

from __future__ import annotations

from typing import TypeVarTuple

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from controller.store.tables import Project, Repository

Columns = TypeVarTuple("Columns")


def with_installed_repository(stmt: Select[*Columns]) -> Select[*Columns]:
    """``stmt`` joined to the :class:`Repository` of its :class:`Project`, kept only where
    an installation reaches that repository."""
    return stmt.join(Repository, Repository.full_name_lower == Project.repo_lower).where(
        Repository.installation_id.is_not(None)
    )


def installed_projects_to_resync(session: Session) -> list[tuple[Project, Repository]]:
    """Connected projects that clone through the App (no ``clone_url`` of their own) and
    their installed repository, oldest project first."""
    rows = session.execute(
        with_installed_repository(select(Project, Repository))
        .where(Project.disconnected_at.is_(None), Project.clone_url.is_(None))
        .order_by(Project.id)
    ).all()
    return [(project, repo) for project, repo in rows]
