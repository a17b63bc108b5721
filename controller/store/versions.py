"""Queries on versions (built, runnable releases of an environment)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.store.sql import one_of
from controller.store.tables import Deployment, Environment, Project, Version


def version_ids_of_environment(session: Session, environment_id: int) -> list[int]:
    return list(
        session.execute(
            select(Version.id).where(Version.environment_id == environment_id)
        ).scalars()
    )


def current_versions(session: Session) -> list[tuple[Environment, Version, Project]]:
    """Every active environment of a connected project, with its current version and
    its project: one query (the resync reads it every pass, for every preview)."""
    rows = session.execute(
        select(Environment, Version, Project)
        .join(Version, Version.id == Environment.current_version_id)
        .join(Project, Project.id == Environment.project_id)
        .where(Environment.status == "active", Project.disconnected_at.is_(None))
    ).all()
    return [(env, version, project) for env, version, project in rows]


def versions_of_environment(session: Session, environment_id: int) -> list[Version]:
    """Newest first."""
    return list(
        session.execute(
            select(Version)
            .where(Version.environment_id == environment_id)
            .order_by(Version.id.desc())
        ).scalars()
    )


def version_by_name(session: Session, environment_id: int, version: str) -> Version | None:
    return session.execute(
        select(Version).where(Version.environment_id == environment_id, Version.version == version)
    ).scalar_one_or_none()


def version_of_deployment(session: Session, deployment_id: str) -> Version | None:
    return session.execute(
        select(Version).where(Version.deployment_id == deployment_id)
    ).scalar_one_or_none()


def last_version_seq(session: Session, environment_id: int, day: str) -> int | None:
    """The highest sequence number given on ``day`` in the environment, if any."""
    return session.execute(
        select(func.max(Version.seq)).where(
            Version.environment_id == environment_id, Version.day == day
        )
    ).scalar_one()


def deployed_version_before(
    session: Session, environment_id: int, before_id: int
) -> Version | None:
    """The newest version older than ``before_id`` whose deployment is ``deployed``."""
    return session.execute(
        select(Version)
        .join(Deployment, Deployment.id == Version.deployment_id)
        .where(
            Version.environment_id == environment_id,
            Version.id < before_id,
            Deployment.status == "deployed",
        )
        .order_by(Version.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def version_names(session: Session, ids: set[int]) -> dict[int, str]:
    """Version id → its name (``YYYYMMDD.N``), for the ids that exist."""
    if not ids:
        return {}
    rows = session.execute(select(Version.id, Version.version).where(one_of(Version.id, ids)))
    return {vid: v for vid, v in rows}
