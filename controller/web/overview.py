"""The project page's read: everything it shows, in one read transaction, a page at a time.

The other pages call the API's handlers (:mod:`controller.web.reads`); the project page
does not, because those answer whole lists: every environment (a project with hundreds
of preview branches loads each of them), and each call opens its own transaction. Here
the same view functions the API answers with (:mod:`controller.views`) are fed by one
query per list, each bounded by what the page shows:

* the fixed environments, and one page of preview branches (active first, then by
  branch; :data:`PREVIEWS_PER_PAGE`), with the number of branches by status;
* the newest deployment of each *shown* environment, and which of them can roll back
  (an older deployed version exists: the button is not offered where it would fail);
* the newest :data:`SHOWN_DEPLOYMENTS` deployments and :data:`SHOWN_EVENTS` events.

The work of rendering is then proportional to what is shown, not to the project's
history.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session
from starlette.requests import Request

from controller.domain.projects import get_project, project_not_deploying_reason
from controller.store.tables import Deployment, Environment, Event, Version
from controller.views import (
    deployments_view,
    environment_view,
    event_view,
    project_view,
    version_strings,
)
from controller.web.reads import SHOWN_DEPLOYMENTS

PREVIEWS_PER_PAGE = 50
SHOWN_EVENTS = 20


def can_roll_back(request: Request, env_id: int) -> bool:
    with request.app.state.services.db.read() as session:
        return env_id in rollback_targets(session, [env_id])


def project_overview(request: Request, ref: str, *, preview_page: int = 1) -> dict[str, Any]:
    """The project page's context; ``preview_page`` counts from 1 and is clamped."""
    with request.app.state.services.db.read() as session:
        project = get_project(session, ref)
        counts = dict(
            session.execute(
                select(Environment.status, func.count())
                .where(Environment.project_id == project.id, Environment.name == "preview")
                .where(Environment.branch.is_not(None))
                .group_by(Environment.status)
            ).all()
        )
        total = sum(counts.values())
        pages = max(1, -(-total // PREVIEWS_PER_PAGE))
        page = min(max(1, preview_page), pages)
        fixed = list(
            session.execute(
                select(Environment)
                .where(Environment.project_id == project.id, Environment.branch.is_(None))
                .where(Environment.name != "preview")
                .order_by(Environment.id)
            ).scalars()
        )
        previews = list(
            session.execute(
                select(Environment)
                .where(Environment.project_id == project.id, Environment.name == "preview")
                .where(Environment.branch.is_not(None))
                .order_by(case((Environment.status == "active", 0), else_=1), Environment.branch)
                .limit(PREVIEWS_PER_PAGE)
                .offset((page - 1) * PREVIEWS_PER_PAGE)
            ).scalars()
        )
        shown = fixed + previews
        versions = version_strings(session, {e.current_version_id for e in shown})
        deployments = session.execute(
            select(Deployment)
            .where(Deployment.project_id == project.id)
            .order_by(Deployment.created_at.desc(), Deployment.id.desc())
            .limit(SHOWN_DEPLOYMENTS)
        ).scalars()
        events = session.execute(
            select(Event)
            .where(Event.project_id == project.id)
            .order_by(Event.id.desc())
            .limit(SHOWN_EVENTS)
        ).scalars()
        return {
            "project": project_view(
                project, not_deploying=project_not_deploying_reason(session, project)
            ),
            "environments": [
                environment_view(e, versions.get(e.current_version_id or 0)) for e in fixed
            ],
            "previews": [
                environment_view(e, versions.get(e.current_version_id or 0)) for e in previews
            ],
            "preview_counts": counts,
            "preview_total": total,
            "preview_page": page,
            "preview_pages": pages,
            "last": last_deployments(session, [e.id for e in shown]),
            "can_roll_back": rollback_targets(session, [e.id for e in shown]),
            "deployments": deployments_view(session, list(deployments)),
            "events": [event_view(e) for e in events],
        }


def last_deployments(session: Session, env_ids: list[int]) -> dict[int, dict[str, str]]:
    """The newest deployment (``id``, ``status``) of each of ``env_ids``: one grouped query."""
    if not env_ids:
        return {}
    newest = (
        select(Deployment.environment_id, func.max(Deployment.created_at).label("at"))
        .where(Deployment.environment_id.in_(env_ids))
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
            Version.environment_id.in_(wanted),
            Version.id < Environment.current_version_id,
            Deployment.status == "deployed",
        )
        .group_by(Version.environment_id)
    ).scalars()
    return set(rows)
