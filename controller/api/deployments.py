"""Deployments: list, show, logs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from controller.api.auth import require_admin
from controller.api.branches import branch_header
from controller.api.errors import ProjectRef, error_responses
from controller.domain.environments import find_environment
from controller.domain.projects import get_project
from controller.errors import NotFound
from controller.models import normalise_environment
from controller.store.deployments import deployment_log_lines, deployment_steps, recent_deployments
from controller.store.tables import Deployment
from controller.views import deployments_view, iso

router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_admin)],
    tags=["deployments"],
    responses=error_responses(400, 401, 404, 409, 422, 503),
)


@router.get("/projects/{ref}/deployments")
def list_deployments(
    request: Request,
    ref: ProjectRef,
    env: str | None = None,
    branch: str | None = None,
    x_slipway_branch: str | None = Depends(branch_header),
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    services = request.app.state.services
    branch = branch or x_slipway_branch
    with services.db.read() as session:
        project = get_project(session, ref)
        if env:
            name = normalise_environment(env)
            if name == "preview" and not branch:
                rows = recent_deployments(
                    session, project.id, environment_name="preview", limit=limit
                )
            else:
                environment = find_environment(session, project, name, branch)
                rows = recent_deployments(
                    session, project.id, environment_id=environment.id, limit=limit
                )
        else:
            rows = recent_deployments(session, project.id, branch=branch or None, limit=limit)
        return deployments_view(session, rows)


def _deployment(session: Any, deployment_id: str) -> Deployment:
    dep = session.get(Deployment, deployment_id)
    if dep is None:
        raise NotFound(f"deployment {deployment_id!r} does not exist")
    return dep


@router.get("/deployments/{deployment_id}")
def get_deployment(request: Request, deployment_id: str) -> dict[str, Any]:
    with request.app.state.services.db.read() as session:
        dep = _deployment(session, deployment_id)
        view = deployments_view(session, [dep])[0]
        steps = deployment_steps(session, dep.id)
        view["steps"] = [
            {
                "name": s.name,
                "status": s.status,
                "attempts": s.attempts,
                "duration_ms": s.duration_ms,
                "error": s.error,
            }
            for s in steps
        ]
        return view


@router.get("/deployments/{deployment_id}/logs")
def get_logs(request: Request, deployment_id: str, after: int = 0) -> dict[str, Any]:
    with request.app.state.services.db.read() as session:
        dep = _deployment(session, deployment_id)
        lines = deployment_log_lines(session, dep.id, after=after)
        return {
            "deployment": dep.id,
            "status": dep.status,
            "lines": [
                {
                    "id": line.id,
                    "step": line.step,
                    "level": line.level,
                    "message": line.message,
                    "time": iso(line.created_at),
                }
                for line in lines
            ],
        }
