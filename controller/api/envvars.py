"""Env vars, as Trigger.dev's management API, and ``keys rotate``.

``GET|POST /projects/{ref}/envvars/{env}``, ``GET|PUT|DELETE …/{env}/{name}``,
``POST …/{env}/import``; ``x-slipway-branch`` (or ``?branch=``) picks a preview branch,
and ``preview`` without a branch is the preview-wide layer every branch inherits.

Decisions where SPEC.md is silent:

* ``POST`` and ``PUT`` create or update (one call sets several names, in one transaction:
  ``{"variables": {...}}``; or Trigger.dev's ``{"name", "value"}``).
* A secret's value is write-only: every answer carries ``value: null`` for it.
* The audit trail is ``GET /projects/{ref}/envvar-history/{env}``: under ``envvars/{env}/``
  it would shadow a variable named ``history``.
* ``POST /keys/rotate`` re-encrypts env vars and environment secret keys under the newest
  ``SLIPWAY_ENCRYPTION_KEY`` and answers with counts.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from controller.api.auth import require_admin
from controller.api.branches import branch_header
from controller.api.errors import EnvName, ProjectRef, error_responses
from controller.domain.projects import get_project
from controller.errors import InvalidInput
from controller.models import normalise_environment
from controller.secretstore.store import (
    Scope,
    decrypt_value,
    get_variable,
    history,
    list_variables,
    rotate_all,
    set_variables,
    unset_variable,
)
from controller.secretstore.variables import MAX_NAME, NAME_PATTERN, parse_import
from controller.store.tables import EnvVar
from controller.views import iso

router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_admin)],
    tags=["envvars"],
    responses=error_responses(400, 401, 404, 409, 422, 503),
)

VarName = Annotated[
    str,
    Path(
        pattern=NAME_PATTERN.pattern,
        max_length=MAX_NAME,
        description="[A-Za-z_][A-Za-z0-9_]*; SLIPWAY_* is reserved except SLIPWAY_BUILD_*",
    ),
]

ADMIN = "admin token"
MAX_IMPORT_BYTES = 4 << 20


class VariableWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    value: str | None = None
    variables: dict[str, str] | None = None
    secret: bool = False
    fork_safe: bool | None = None


class ValueWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str
    secret: bool = False
    fork_safe: bool | None = None


def _scope(session: Any, ref: str, env: str, branch: str | None) -> Scope:
    """As everywhere in the API, a branch only matters with ``preview``."""
    named = branch if normalise_environment(env) == "preview" else None
    return Scope.of(get_project(session, ref), env, named)


def variable_view(row: EnvVar, value: str | None) -> dict[str, Any]:
    return {
        "name": row.name,
        "value": None if row.secret else value,
        "secret": row.secret,
        "fork_safe": row.fork_safe,
        "source": row.source,
        "updated_by": row.updated_by,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def _view(services: Any, row: EnvVar) -> dict[str, Any]:
    value = None if row.secret else decrypt_value(services.cipher, row)
    return variable_view(row, value)


@router.get("/projects/{ref}/envvars/{env}")
def list_envvars(
    request: Request,
    ref: ProjectRef,
    env: EnvName,
    branch: str | None = None,
    x_slipway_branch: str | None = Depends(branch_header),
) -> list[dict[str, Any]]:
    services = request.app.state.services
    with services.db.read() as session:
        scope = _scope(session, ref, env, branch or x_slipway_branch)
        return [_view(services, row) for row in list_variables(session, scope)]


@router.post("/projects/{ref}/envvars/{env}", status_code=201)
def create_envvars(
    request: Request,
    ref: ProjectRef,
    env: EnvName,
    body: VariableWrite,
    branch: str | None = None,
    x_slipway_branch: str | None = Depends(branch_header),
) -> dict[str, Any]:
    values = dict(body.variables or {})
    if body.name is not None:
        if body.value is None:
            raise InvalidInput("a variable needs a value")
        values[body.name] = body.value
    services = request.app.state.services
    with services.db.transaction() as session:
        scope = _scope(session, ref, env, branch or x_slipway_branch)
        written, _ = set_variables(
            session,
            services.cipher,
            scope,
            values,
            actor=ADMIN,
            secret=body.secret,
            fork_safe=body.fork_safe,
        )
        return {"success": True, "written": written}


@router.get("/projects/{ref}/envvar-history/{env}")
def envvar_history(
    request: Request,
    ref: ProjectRef,
    env: EnvName,
    branch: str | None = None,
    x_slipway_branch: str | None = Depends(branch_header),
) -> list[dict[str, Any]]:
    with request.app.state.services.db.read() as session:
        scope = _scope(session, ref, env, branch or x_slipway_branch)
        return [
            {"name": c.name, "action": c.action, "actor": c.actor, "time": iso(c.created_at)}
            for c in history(session, scope)
        ]


@router.post("/projects/{ref}/envvars/{env}/import")
async def import_envvars(
    request: Request,
    ref: ProjectRef,
    env: EnvName,
    override: bool = False,
    branch: str | None = None,
    x_slipway_branch: str | None = Depends(branch_header),
) -> dict[str, Any]:
    """A JSON ``{"variables": {...}, "override": bool}`` or a dotenv body."""
    if int(request.headers.get("content-length") or 0) > MAX_IMPORT_BYTES:
        raise InvalidInput(f"the import body is larger than {MAX_IMPORT_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_IMPORT_BYTES:
            raise InvalidInput(f"the import body is larger than {MAX_IMPORT_BYTES} bytes")
    values, json_override = parse_import(body) if body.strip() else ({}, False)
    services = request.app.state.services

    def write() -> dict[str, Any]:
        with services.db.transaction() as session:
            scope = _scope(session, ref, env, branch or x_slipway_branch)
            written, kept = set_variables(
                session,
                services.cipher,
                scope,
                values,
                actor=f"import ({ADMIN})",
                source="import",
                override=override or json_override,
            )
            return {"success": True, "imported": written, "kept": kept}

    return await run_in_threadpool(write)


@router.get("/projects/{ref}/envvars/{env}/{name}")
def get_envvar(
    request: Request,
    ref: ProjectRef,
    env: EnvName,
    name: VarName,
    branch: str | None = None,
    x_slipway_branch: str | None = Depends(branch_header),
) -> dict[str, Any]:
    services = request.app.state.services
    with services.db.read() as session:
        scope = _scope(session, ref, env, branch or x_slipway_branch)
        return _view(services, get_variable(session, scope, name))


@router.put("/projects/{ref}/envvars/{env}/{name}")
def put_envvar(
    request: Request,
    ref: ProjectRef,
    env: EnvName,
    name: VarName,
    body: ValueWrite,
    branch: str | None = None,
    x_slipway_branch: str | None = Depends(branch_header),
) -> dict[str, Any]:
    services = request.app.state.services
    with services.db.transaction() as session:
        scope = _scope(session, ref, env, branch or x_slipway_branch)
        set_variables(
            session,
            services.cipher,
            scope,
            {name: body.value},
            actor=ADMIN,
            secret=body.secret,
            fork_safe=body.fork_safe,
        )
        session.flush()
        return _view(services, get_variable(session, scope, name))


@router.delete("/projects/{ref}/envvars/{env}/{name}")
def delete_envvar(
    request: Request,
    ref: ProjectRef,
    env: EnvName,
    name: VarName,
    branch: str | None = None,
    x_slipway_branch: str | None = Depends(branch_header),
) -> dict[str, Any]:
    with request.app.state.services.db.transaction() as session:
        scope = _scope(session, ref, env, branch or x_slipway_branch)
        unset_variable(session, scope, name, actor=ADMIN)
        return {"success": True}


@router.post("/keys/rotate")
def rotate_keys(request: Request) -> dict[str, Any]:
    services = request.app.state.services
    with services.db.transaction() as session:
        return rotate_all(session, services.cipher)
