"""Env vars, as Trigger.dev's management API, and ``keys rotate``.

``GET|POST /projects/{ref}/envvars/{env}``, ``GET|PUT|DELETE …/{env}/{name}``,
``POST …/{env}/import``; ``x-slipway-branch`` (or ``?branch=``) picks a preview branch,
and ``preview`` without a branch is the preview-wide layer every branch inherits.

Decisions where SPEC.md is silent:

* ``POST`` and ``PUT`` create or update. ``POST`` takes one of two strict bodies (JSON
  types only: ``fork_safe: 0`` is refused): ``{"variables": {...}}`` sets several names in
  one transaction, Trigger.dev's ``{"name", "value"}`` one; not both at once.
* Names are checked by the store alone (``validate_name``, 422 with the reason); the
  schema carries the same rule as one pattern (:data:`NAME_SCHEMA_PATTERN`), so that
  a schema-valid name is never refused. The shared preamble (``ref``, ``env``, the
  branch) is :func:`controller.api.branches.env_target`.
* A secret's value is write-only: every answer carries ``value: null`` for it.
* The audit trail is ``GET /projects/{ref}/envvar-history/{env}``: under ``envvars/{env}/``
  it would shadow a variable named ``history``.
* ``POST /keys/rotate`` re-encrypts env vars and environment secret keys under the newest
  ``SLIPWAY_ENCRYPTION_KEY`` and answers with counts.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from controller.api.auth import require_admin
from controller.api.branches import EnvTarget, env_target
from controller.api.errors import error_responses
from controller.domain.projects import get_project
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
from controller.secretstore.variables import (
    BUILD_PREFIX,
    MAX_NAME,
    MAX_VALUE,
    MAX_VARIABLES,
    RESERVED_PREFIX,
    parse_import,
    validate_name,
)
from controller.store.tables import EnvVar
from controller.views import iso

router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_admin)],
    tags=["envvars"],
    responses=error_responses(400, 401, 404, 422, 503),
)

# What :func:`validate_name` accepts, as one pattern for the schema (it stays the one check:
# its 422 says why a name is refused, reserved or malformed).
NAME_SCHEMA_PATTERN = (
    f"^(?!{RESERVED_PREFIX}(?!{BUILD_PREFIX[len(RESERVED_PREFIX) :]}[A-Za-z_]))"
    f"[A-Za-z_][A-Za-z0-9_]{{0,{MAX_NAME - 1}}}$"
)
NAME_DESCRIPTION = (
    "[A-Za-z_][A-Za-z0-9_]* (at most 255 characters); SLIPWAY_* is reserved except "
    "SLIPWAY_BUILD_<NAME> (refused with 422)"
)

VarName = Annotated[
    str,
    Path(json_schema_extra={"pattern": NAME_SCHEMA_PATTERN}, description=NAME_DESCRIPTION),
]
Target = Annotated[EnvTarget, Depends(env_target)]
Value = Annotated[str, Field(max_length=MAX_VALUE)]

ADMIN = "admin token"
MAX_IMPORT_BYTES = 4 << 20


class VariablesWrite(BaseModel):
    """Several names at once, in one transaction."""

    model_config = ConfigDict(extra="forbid", strict=True)

    variables: dict[str, Value] = Field(
        json_schema_extra={
            "propertyNames": {"pattern": NAME_SCHEMA_PATTERN},
            "maxProperties": MAX_VARIABLES,
        },
        description=f"name → value; names as {NAME_DESCRIPTION}",
    )
    secret: bool = False
    fork_safe: bool | None = None


class NamedWrite(BaseModel):
    """Trigger.dev's form: one name and its value."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(
        json_schema_extra={"pattern": NAME_SCHEMA_PATTERN}, description=NAME_DESCRIPTION
    )
    value: Value
    secret: bool = False
    fork_safe: bool | None = None


class ValueWrite(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    value: Value
    secret: bool = False
    fork_safe: bool | None = None


def _scope(session: Any, target: EnvTarget) -> Scope:
    return Scope.of(get_project(session, target.ref), target.env, target.branch)


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
def list_envvars(request: Request, target: Target) -> list[dict[str, Any]]:
    services = request.app.state.services
    with services.db.read() as session:
        return [_view(services, row) for row in list_variables(session, _scope(session, target))]


@router.post("/projects/{ref}/envvars/{env}", status_code=201)
def create_envvars(
    request: Request, target: Target, body: VariablesWrite | NamedWrite
) -> dict[str, Any]:
    values = body.variables if isinstance(body, VariablesWrite) else {body.name: body.value}
    services = request.app.state.services
    with services.db.transaction() as session:
        written, _ = set_variables(
            session,
            services.cipher,
            _scope(session, target),
            values,
            actor=ADMIN,
            secret=body.secret,
            fork_safe=body.fork_safe,
        )
        return {"success": True, "written": written}


@router.get("/projects/{ref}/envvar-history/{env}")
def envvar_history(request: Request, target: Target) -> list[dict[str, Any]]:
    with request.app.state.services.db.read() as session:
        return [
            {"name": c.name, "action": c.action, "actor": c.actor, "time": iso(c.created_at)}
            for c in history(session, _scope(session, target))
        ]


def _too_large() -> HTTPException:
    return HTTPException(413, f"the import body is larger than {MAX_IMPORT_BYTES} bytes")


@router.post("/projects/{ref}/envvars/{env}/import", responses=error_responses(413))
async def import_envvars(
    request: Request, target: Target, override: bool = False
) -> dict[str, Any]:
    """A JSON ``{"variables": {...}, "override": bool}`` or a dotenv body."""
    if int(request.headers.get("content-length") or 0) > MAX_IMPORT_BYTES:
        raise _too_large()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_IMPORT_BYTES:
            raise _too_large()
    values, json_override = parse_import(body) if body.strip() else ({}, False)
    services = request.app.state.services

    def write() -> dict[str, Any]:
        with services.db.transaction() as session:
            written, kept = set_variables(
                session,
                services.cipher,
                _scope(session, target),
                values,
                actor=f"import ({ADMIN})",
                source="import",
                override=override or json_override,
            )
            return {"success": True, "imported": written, "kept": kept}

    return await run_in_threadpool(write)


@router.get("/projects/{ref}/envvars/{env}/{name}")
def get_envvar(request: Request, target: Target, name: VarName) -> dict[str, Any]:
    validate_name(name)
    services = request.app.state.services
    with services.db.read() as session:
        return _view(services, get_variable(session, _scope(session, target), name))


@router.put("/projects/{ref}/envvars/{env}/{name}")
def put_envvar(request: Request, target: Target, name: VarName, body: ValueWrite) -> dict[str, Any]:
    services = request.app.state.services
    with services.db.transaction() as session:
        scope = _scope(session, target)
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
def delete_envvar(request: Request, target: Target, name: VarName) -> dict[str, Any]:
    validate_name(name)
    with request.app.state.services.db.transaction() as session:
        unset_variable(session, _scope(session, target), name, actor=ADMIN)
        return {"success": True}


@router.post("/keys/rotate")
def rotate_keys(request: Request) -> dict[str, Any]:
    services = request.app.state.services
    with services.db.transaction() as session:
        return rotate_all(session, services.cipher)
