"""What the pages read: the API's own read functions, called as plain functions.

The pages show exactly what the API answers because they call the same handlers
(``controller.api.*``), which are plain functions under their decorators; arguments
FastAPI would fill from headers or query defaults are passed explicitly here. The one
reads the API does not have yet — an environment's recent runs (:func:`recent_runs`) and
each environment's newest deployment (:func:`last_deployments`) — are kept here, beside
their only caller, until the API offers them too.

The environment-variable section is a seam: :func:`envvar_rows` answers ``None`` ("not
available") until env vars land; then it returns the names, who changed them and when
— never a value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from starlette.requests import Request

from controller.api import deployments as api_deployments
from controller.api import projects as api_projects
from controller.api import versions as api_versions
from controller.deployments import get_project
from controller.runs import get_run
from controller.store.tables import Deployment, Run, Version
from controller.views import run_view

SHOWN_DEPLOYMENTS = 50
SHOWN_VERSIONS = 100


def projects(request: Request) -> list[dict[str, Any]]:
    return api_projects.list_projects(request)


def project(request: Request, ref: str) -> dict[str, Any]:
    return api_projects.get_one(request, ref)


def environments(request: Request, ref: str) -> list[dict[str, Any]]:
    return api_projects.list_environments(request, ref)


def events(request: Request, ref: str, limit: int = 20) -> list[dict[str, Any]]:
    return api_projects.list_events(request, ref, limit=limit)


def deployments(
    request: Request,
    ref: str,
    *,
    env: str | None = None,
    branch: str | None = None,
    limit: int = SHOWN_DEPLOYMENTS,
) -> list[dict[str, Any]]:
    return api_deployments.list_deployments(
        request, ref, env=env, branch=branch, x_slipway_branch=None, limit=limit
    )


def deployment(request: Request, deployment_id: str) -> dict[str, Any]:
    return api_deployments.get_deployment(request, deployment_id)


def deployment_logs(request: Request, deployment_id: str, after: int = 0) -> dict[str, Any]:
    return api_deployments.get_logs(request, deployment_id, after=after)


def versions(request: Request, ref: str, env: str, branch: str | None) -> list[dict[str, Any]]:
    return api_versions.list_versions(request, ref, env, branch=branch, x_slipway_branch=None)


def rollback(request: Request, ref: str, env: str, branch: str | None) -> dict[str, Any]:
    return api_versions.post_rollback(request, ref, env, branch=branch, x_slipway_branch=None)


def promote(
    request: Request, ref: str, env: str, *, branch: str | None, version: str
) -> dict[str, Any]:
    return api_versions.post_promote(
        request,
        ref,
        env,
        api_versions.PromoteBody(version=version),
        branch=branch,
        x_slipway_branch=None,
    )


def run(request: Request, run_id: str) -> dict[str, Any]:
    return get_run(request.app.state.services.db, run_id, key=None, admin=True)


def recent_runs(request: Request, environment_id: int, limit: int = 50) -> list[dict[str, Any]]:
    with request.app.state.services.db.read() as session:
        rows = session.execute(
            select(Run, Version.version)
            .join(Version, Version.id == Run.version_id)
            .where(Run.environment_id == environment_id)
            .order_by(Run.created_at.desc())
            .limit(limit)
        ).all()
        return [run_view(r, v, with_logs=False) for r, v in rows]


def envvar_rows(request: Request, ref: str, env: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Env var names of an environment (``name``, ``updated_by``, ``updated_at``), or
    ``None`` while Slipway has no env vars yet. Never values."""
    return None


def last_deployments(request: Request, ref: str) -> dict[int, dict[str, str]]:
    """Each environment's newest deployment (``id``, ``status``), keyed by environment id:
    one grouped query, so a project with thousands of deployments and hundreds of preview
    branches does not load every deployment to find them."""
    with request.app.state.services.db.read() as session:
        project_id = get_project(session, ref).id
        newest = (
            select(Deployment.environment_id, func.max(Deployment.created_at).label("at"))
            .where(Deployment.project_id == project_id)
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


def duration_seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
    finish = datetime.fromisoformat(end.replace("Z", "+00:00"))
    return max(0.0, (finish - begin).total_seconds())
