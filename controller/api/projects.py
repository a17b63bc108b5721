"""Projects, their environments and what happened to them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from controller.api.auth import require_admin
from controller.api.branches import EnvTarget, env_target
from controller.api.errors import ProjectRef, error_responses
from controller.domain.environments import find_environment
from controller.domain.projects import (
    create_project,
    disconnect_project,
    get_project,
    project_not_deploying_reason,
    update_project,
)
from controller.errors import SourceNotFound, SourceUnavailable
from controller.gates.spec import MAX_TIMEOUT, MIN_TIMEOUT
from controller.models import BRANCH_PATTERN, REF_PATTERN
from controller.runtimes.upkeep import retire_project
from controller.store.environments import environments_of_project, preview_template
from controller.store.events import recent_events
from controller.store.projects import all_projects
from controller.store.tables import Project
from controller.views import environment_view, event_view, project_view, version_strings

router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_admin)],
    tags=["projects"],
    responses=error_responses(400, 401, 404, 409, 422, 503),
)


REPO_PATTERN = r"^[^/]+/[^/]+$"


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _settable(**constraints: Any) -> Any:
    """A field that may be left out but is never null (its column is NOT NULL)."""
    return Field(default=None, json_schema_extra=_drop_default, **constraints)


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Strict fields (0 is not false, "5" is not 5), but 5.0 is an integer, as in JSON Schema.
JsonInt = Annotated[int, BeforeValidator(_integral)]

CLONE_URL_TIMEOUT = 10.0


_DNS = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
GATE_PATTERN = (
    rf"^(manual|none|(github-deployment|check-run):\S.{{0,254}}|kubernetes:{_DNS}/{_DNS})$"
)
GateText = Annotated[str | None, Field(pattern=GATE_PATTERN)]


class PromotionGates(BaseModel):
    """``github-deployment:NAME``, ``check-run:NAME``, ``kubernetes:NAMESPACE/DEPLOYMENT``
    or ``manual`` per environment (a preview gate holds for every preview branch)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    production: GateText = None
    staging: GateText = None
    preview: GateText = None


class ProjectFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    repo: str = _settable(pattern=REPO_PATTERN, examples=["octo-org/demo"])
    clone_url: str | None = None
    production_branch: str | None = Field(default=None, pattern=BRANCH_PATTERN.pattern)
    staging_branch: str | None = Field(default=None, pattern=BRANCH_PATTERN.pattern)
    previews: bool = _settable()
    fork_previews: bool = _settable()
    preview_limit: JsonInt = _settable(ge=0, le=1000)
    config_path: str | None = None
    install_command: str | None = None
    pre_build_command: str | None = None
    promotion_gates: PromotionGates = _settable(
        description="promotion gates by environment; null (or none) removes one",
        examples=[{"production": "github-deployment:Production"}],
    )
    promotion_timeout: JsonInt = _settable(
        ge=MIN_TIMEOUT, le=MAX_TIMEOUT, description="seconds a gated deployment waits"
    )


class ProjectCreate(ProjectFields):
    ref: str = Field(pattern=REF_PATTERN.pattern, examples=["demo"])
    repo: str = Field(pattern=REPO_PATTERN, examples=["octo-org/demo"])


class ProjectUpdate(ProjectFields):
    connected: bool | None = None


def _services(request: Request) -> Any:
    return request.app.state.services


def _view(session: Any, project: Project) -> dict[str, Any]:
    return project_view(project, not_deploying=project_not_deploying_reason(session, project))


@router.get("/projects")
def list_projects(request: Request) -> list[dict[str, Any]]:
    with _services(request).db.read() as session:
        projects = all_projects(session)
        return [_view(session, p) for p in projects]


def _check_clone_url(services: Any, clone_url: str | None) -> list[str]:
    """Refuse a local path that is no git repository (422); a remote the server cannot
    reach now is only a warning, as it may be a network or access problem fixed later."""
    if not clone_url:
        return []
    try:
        services.source.probe(clone_url=clone_url, timeout=CLONE_URL_TIMEOUT)
    except (SourceNotFound, SourceUnavailable) as exc:
        return [
            f"the clone URL was not usable just now ({exc.message}); deployments fail until it is"
        ]
    return []


@router.post("/projects", status_code=201)
def post_project(request: Request, body: ProjectCreate) -> dict[str, Any]:
    services = _services(request)
    warnings = _check_clone_url(services, body.clone_url)
    with services.db.transaction() as session:
        fields = body.model_dump(exclude={"ref"}, exclude_none=True)
        project = create_project(session, services.cipher, ref=body.ref, **fields)
        return {**_view(session, project), "warnings": warnings}


@router.get("/projects/{ref}")
def get_one(request: Request, ref: ProjectRef) -> dict[str, Any]:
    with _services(request).db.read() as session:
        return _view(session, get_project(session, ref))


@router.patch("/projects/{ref}")
def patch_project(request: Request, ref: ProjectRef, body: ProjectUpdate) -> dict[str, Any]:
    services = _services(request)
    warnings = _check_clone_url(services, body.clone_url)
    with services.db.transaction() as session:
        project = get_project(session, ref)
        update_project(session, project, **body.model_dump(exclude_unset=True))
        view = _view(session, project)
    services.queue.notify()
    return {**view, "warnings": warnings}


@router.delete("/projects/{ref}")
def delete_project(request: Request, ref: ProjectRef) -> dict[str, Any]:
    """Disconnect: deployments stop and queued work is canceled; every record is kept."""
    services = _services(request)
    with services.db.transaction() as session:
        project = get_project(session, ref)
        disconnect_project(session, project)
        view = _view(session, project)
    retire_project(services.db, services.runtime, ref)
    return view


@router.get("/projects/{ref}/environments")
def list_environments(request: Request, ref: ProjectRef) -> list[dict[str, Any]]:
    with _services(request).db.read() as session:
        project = get_project(session, ref)
        envs = environments_of_project(session, project.id)
        versions = version_strings(session, {e.current_version_id for e in envs})
        return [environment_view(e, versions.get(e.current_version_id or 0)) for e in envs]


@router.get("/projects/{ref}/environments/{env}/secret-key")
def get_secret_key(
    request: Request, target: Annotated[EnvTarget, Depends(env_target)]
) -> dict[str, Any]:
    """The environment's secret key (``sk_…``), for triggering runs. Shown on purpose."""
    services = _services(request)
    with services.db.read() as session:
        project = get_project(session, target.ref)
        if target.env == "preview" and not target.branch:
            environment = preview_template(session, project.id)
        else:
            environment = find_environment(session, project, target.env, target.branch)
        return {
            "environment": environment.name,
            "branch": environment.branch,
            "secret_key": services.cipher.decrypt(environment.secret_key_encrypted),
        }


@router.get("/projects/{ref}/events")
def list_events(
    request: Request, ref: ProjectRef, limit: int = Query(100, ge=1, le=1000)
) -> list[dict[str, Any]]:
    """Why deliveries did what they did: skipped previews, archived branches, access."""
    with _services(request).db.read() as session:
        project = get_project(session, ref)
        events = recent_events(session, project.id, limit=limit)
        return [event_view(e) for e in events]
