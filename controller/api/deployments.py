"""Deployments: list, show, logs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from controller.api.auth import require_admin
from controller.api.branches import branch_header
from controller.api.errors import ProjectRef, error_responses
from controller.domain.environments import find_environment
from controller.domain.projects import get_project
from controller.errors import NotFound
from controller.models import normalise_environment
from controller.store.tables import Deployment, DeploymentLog, DeploymentStep, Environment
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
        query = select(Deployment).where(Deployment.project_id == project.id)
        if env:
            name = normalise_environment(env)
            if name == "preview" and not branch:
                ids = select(Environment.id).where(
                    Environment.project_id == project.id, Environment.name == "preview"
                )
                query = query.where(Deployment.environment_id.in_(ids))
            else:
                query = query.where(
                    Deployment.environment_id == find_environment(session, project, name, branch).id
                )
        elif branch:
            ids = select(Environment.id).where(
                Environment.project_id == project.id, Environment.branch == branch
            )
            query = query.where(Deployment.environment_id.in_(ids))
        rows = (
            session.execute(
                query.order_by(Deployment.created_at.desc(), Deployment.id.desc()).limit(limit)
            )
            .scalars()
            .all()
        )
        return deployments_view(session, list(rows))


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
        steps = session.execute(
            select(DeploymentStep)
            .where(DeploymentStep.deployment_id == dep.id)
            .order_by(DeploymentStep.id)
        ).scalars()
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
        lines = (
            session.execute(
                select(DeploymentLog)
                .where(DeploymentLog.deployment_id == dep.id, DeploymentLog.id > after)
                .order_by(DeploymentLog.id)
                .limit(5000)
            )
            .scalars()
            .all()
        )
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
