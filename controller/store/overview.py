"""Bounded reads of one project's page (``controller.web.overview``): each is one query,
bounded by what the page shows, so rendering the page costs what it shows and not the
project's history. The preview branches' page and counts are in
:mod:`controller.store.previews`. Callers own the session; these only read."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from controller.store.sql import one_of
from controller.store.tables import Deployment, Environment, Run, Version


def fixed_environments(session: Session, project_id: int) -> list[Environment]:
    """Production and staging (every environment that is not a preview), oldest first."""
    return list(
        session.execute(
            select(Environment)
            .where(Environment.project_id == project_id, Environment.branch.is_(None))
            .where(Environment.name != "preview")
            .order_by(Environment.id)
        ).scalars()
    )


def newest_deployments(session: Session, project_id: int, *, limit: int) -> list[Deployment]:
    return list(
        session.execute(
            select(Deployment)
            .where(Deployment.project_id == project_id)
            .order_by(Deployment.created_at.desc(), Deployment.id.desc())
            .limit(limit)
        ).scalars()
    )


def last_deployments(session: Session, env_ids: list[int]) -> dict[int, dict[str, str]]:
    """The newest deployment (``id``, ``status``) of each of ``env_ids``: one grouped query."""
    if not env_ids:
        return {}
    newest = (
        select(Deployment.environment_id, func.max(Deployment.created_at).label("at"))
        .where(one_of(Deployment.environment_id, env_ids))
        .group_by(Deployment.environment_id)
        .subquery()
    )
    rows = session.execute(
        select(Deployment.environment_id, Deployment.id, Deployment.status)
        .join(
            newest,
            and_(
                Deployment.environment_id == newest.c.environment_id,
                Deployment.created_at == newest.c.at,
            ),
        )
        .order_by(Deployment.id)
    ).all()
    return {env_id: {"id": dep_id, "status": status} for env_id, dep_id, status in rows}


def rollback_targets(session: Session, env_ids: Iterable[int]) -> set[int]:
    """Those of ``env_ids`` with a deployed version older than the current one — what
    :func:`controller.versions.previous_version` looks for — in one grouped query."""
    wanted = list(env_ids)
    if not wanted:
        return set()
    rows = session.execute(
        select(Version.environment_id)
        .join(Deployment, Deployment.id == Version.deployment_id)
        .join(Environment, Environment.id == Version.environment_id)
        .where(
            one_of(Version.environment_id, wanted),
            Version.id < Environment.current_version_id,
            Deployment.status == "deployed",
        )
        .group_by(Version.environment_id)
    ).scalars()
    return set(rows)


def recent_runs_of_environment(
    session: Session, environment_id: int, *, limit: int
) -> list[tuple[Run, str]]:
    """The environment's newest runs with their version string, newest first."""
    rows = session.execute(
        select(Run, Version.version)
        .join(Version, Version.id == Run.version_id)
        .where(Run.environment_id == environment_id)
        .order_by(Run.created_at.desc())
        .limit(limit)
    ).all()
    return [(run, version) for run, version in rows]
