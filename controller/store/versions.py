"""Queries on versions (built, runnable releases of an environment)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.store.tables import Environment, Project, Version


def version_ids_of_environment(session: Session, environment_id: int) -> list[int]:
    return list(
        session.execute(
            select(Version.id).where(Version.environment_id == environment_id)
        ).scalars()
    )


def current_versions(session: Session) -> list[tuple[Environment, Version]]:
    """Every active environment of a connected project, with its current version."""
    rows = session.execute(
        select(Environment, Version)
        .join(Version, Version.id == Environment.current_version_id)
        .join(Project, Project.id == Environment.project_id)
        .where(Environment.status == "active", Project.disconnected_at.is_(None))
    ).all()
    return [(env, version) for env, version in rows]
