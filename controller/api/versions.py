"""Versions, promotion, rollback, upload deploys and branch archiving."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from controller.api.auth import require_admin
from controller.api.branches import EnvTarget, branch_header, env_target
from controller.api.errors import ENV_PATTERN, ProjectRef, error_responses
from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import archive_branch, ensure_environment, find_environment
from controller.domain.projects import get_project
from controller.errors import InvalidInput, NotFound
from controller.ids import new_id
from controller.metrics import count_promotion
from controller.models import BRANCH_PATTERN, normalise_environment
from controller.store.tables import Environment, Version
from controller.versions import previous_version, promotable, promote
from controller.views import deployments_view, environment_view, version_strings, version_view

router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_admin)],
    tags=["versions"],
    responses=error_responses(400, 401, 404, 409, 422, 503),
)

MAX_UPLOAD = 100 * 1024 * 1024
SHA_PATTERN = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


# The preview root holds the preview-wide key only: versions and deployments belong to its
# branches. A request that names none finds nothing (404; the schema cannot make the
# branch required for env=preview alone).
NO_PREVIEW_BRANCH = (
    "the preview environment has no versions of its own: name a preview branch "
    "(x-slipway-branch header or ?branch=; CLI: --branch)"
)


class PromoteBody(BaseModel):
    version: str = Field(pattern=r"^[0-9]+(\.[0-9]+)*$", examples=["20260101.2"])


Target = Annotated[EnvTarget, Depends(env_target)]


def _env(session: Any, target: EnvTarget) -> tuple[Any, Environment]:
    project = get_project(session, target.ref)
    if target.env == "preview" and not target.branch:
        raise NotFound(NO_PREVIEW_BRANCH)
    return project, find_environment(session, project, target.env, target.branch)


@router.get("/projects/{ref}/environments/{env}/versions")
def list_versions(
    request: Request,
    target: Target,
) -> list[dict[str, Any]]:
    with request.app.state.services.db.read() as session:
        _project, environment = _env(session, target)
        rows = (
            session.execute(
                select(Version)
                .where(Version.environment_id == environment.id)
                .order_by(Version.id.desc())
            )
            .scalars()
            .all()
        )
        return [
            version_view(v, environment, current=v.id == environment.current_version_id)
            for v in rows
        ]


@router.get("/projects/{ref}/environments/{env}/tasks")
def list_tasks(
    request: Request,
    target: Target,
    version: str | None = None,
) -> dict[str, Any]:
    with request.app.state.services.db.read() as session:
        _project, environment = _env(session, target)
        if version:
            row = session.execute(
                select(Version).where(
                    Version.environment_id == environment.id, Version.version == version
                )
            ).scalar_one_or_none()
        elif environment.current_version_id:
            row = session.get(Version, environment.current_version_id)
        else:
            row = None
        if row is None:
            raise NotFound(
                "no such version" if version else "this environment has no current version yet"
            )
        return {"version": row.version, "tasks": row.tasks}


def _promote(request: Request, target: EnvTarget, pick: Any) -> dict[str, Any]:
    services = request.app.state.services
    with services.db.read() as session:
        _project, environment = _env(session, target)
        version = pick(session, environment)
        version_id = version.id
    new, old = promote(services.db, services.runtime, version_id=version_id)
    with services.db.read() as session:
        environment = session.get(Environment, environment.id)
        view = environment_view(environment, new)
    return {"environment": view, "version": new, "previous": old}


@router.post("/projects/{ref}/environments/{env}/promote")
@count_promotion("promote")
def post_promote(
    request: Request,
    target: Target,
    body: PromoteBody,
) -> dict[str, Any]:
    return _promote(
        request,
        target,
        lambda session, environment: promotable(session, environment, body.version),
    )


@router.post("/projects/{ref}/environments/{env}/rollback")
@count_promotion("rollback")
def post_rollback(
    request: Request,
    target: Target,
) -> dict[str, Any]:
    return _promote(
        request,
        target,
        lambda session, environment: promotable(
            session, environment, previous_version(session, environment).version
        ),
    )


@router.post("/projects/{ref}/branches/{branch:path}/archive")
def post_archive(request: Request, ref: ProjectRef, branch: str) -> dict[str, Any]:
    services = request.app.state.services
    with services.db.transaction() as session:
        project = get_project(session, ref)
        environment = archive_branch(session, project, branch, "archived by hand")
        if environment is None:
            raise NotFound(f"preview branch {branch!r} does not exist in project {ref}")
        view = environment_view(
            environment,
            version_strings(session, {environment.current_version_id}).get(
                environment.current_version_id or 0
            ),
        )
    services.retire_environment(environment.id)
    return view


UPLOAD_BODY = {
    "required": True,
    "content": {
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary", "minLength": 1},
        }
    },
}


@router.post(
    "/projects/{ref}/deployments",
    status_code=202,
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses=error_responses(413),
)
async def post_deployment(
    request: Request,
    ref: ProjectRef,
    env: str = Query("production", pattern=ENV_PATTERN),
    branch: str | None = Query(None, pattern=BRANCH_PATTERN.pattern),
    skip_promotion: bool = False,
    skip_sync_env_vars: bool = False,
    sha: str | None = Query(None, description="the commit the upload was made from (HEAD)"),
    dirty: bool = Query(False, description="the upload differs from that commit"),
    x_slipway_branch: str | None = Depends(branch_header),
) -> dict[str, Any]:
    """Deploy uploaded source (a gzip tarball body), as `slipway deploy` does.

    From a git working tree the CLI sends ``sha`` (its HEAD) and ``dirty``: the deployment
    and its version record that commit, and ``options.dirty`` says the tree had changes."""
    services = request.app.state.services
    name = normalise_environment(env)
    branch = branch or x_slipway_branch
    if name == "preview" and not branch:
        raise NotFound(NO_PREVIEW_BRANCH)
    if name == "preview" and not BRANCH_PATTERN.match(branch or ""):
        raise InvalidInput(f"{branch!r} is not a valid branch name")
    upload_id = new_id("upl")
    path = services.uploads / f"{upload_id}.tar.gz"
    size = 0
    with open(path, "wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD:
                out.close()
                os.unlink(path)
                raise HTTPException(413, f"upload larger than {MAX_UPLOAD >> 20} MiB")
            out.write(chunk)
    if size == 0:
        os.unlink(path)
        raise InvalidInput("the upload is empty: send the source as a gzip tarball body")
    with services.db.transaction() as session:
        project = get_project(session, ref)
        environment = ensure_environment(
            session,
            services.cipher,
            project=project,
            name=name,
            branch=branch if name == "preview" else None,
        )
        deployment = request_deployment(
            session,
            project=project,
            environment=environment,
            request=DeployRequest(
                sha=sha,
                ref="upload",
                source="upload",
                upload_path=str(path),
                options={
                    "skip_promotion": skip_promotion,
                    "skip_sync_env_vars": skip_sync_env_vars,
                    **({"dirty": dirty} if sha else {}),
                },
            ),
        )
        view = deployments_view(session, [deployment])[0]
    services.queue.notify()
    return view
