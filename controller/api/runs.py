"""Running tasks with an environment's secret key (``Authorization: Bearer sk_…``).

The trigger reads its body itself, bounded: ``Content-Length`` is checked first and the
stream is counted while reading, so a huge body is refused (413) before anything parses
it. The body may be up to the payload bound plus a small envelope (``options``, the JSON
around the payload); the payload itself is measured again after parsing. Because FastAPI
does not parse the body, its schema is given to OpenAPI by hand (``TRIGGER_BODY``).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from controller.api.auth import bearer
from controller.api.branches import branch_header
from controller.api.errors import error_responses
from controller.errors import InvalidInput
from controller.runs import (
    PayloadTooLarge,
    RunLimits,
    Unauthorized,
    describe_size,
    get_run,
    trigger,
)

router = APIRouter(prefix="/api/v1", tags=["runs"])

ENVELOPE_BYTES = 64 * 1024

TRIGGER_BODY: dict[str, Any] = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "payload": {"description": "Any JSON value; the task's input_schema applies"},
                    "options": {
                        "type": "object",
                        "properties": {
                            "version": {
                                "type": "string",
                                "description": "Pin the run to this version",
                            }
                        },
                    },
                },
            }
        }
    },
}


def _unauthorized(exc: Unauthorized) -> HTTPException:
    return HTTPException(status_code=401, detail=str(exc), headers={"WWW-Authenticate": "Bearer"})


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status_code=413,
        detail=f"the trigger body is larger than {describe_size(limit)} "
        "(SLIPWAY_MAX_PAYLOAD_BYTES on the server sets the payload bound)",
    )


def run_limits(request: Request) -> RunLimits:
    runtime = request.app.state.services.settings.runtime
    return RunLimits(
        payload_bytes=runtime.max_payload_bytes,
        output_bytes=runtime.max_output_bytes,
        log_bytes=runtime.max_run_log_bytes,
    )


async def read_trigger_body(request: Request, *, payload_limit: int) -> dict[str, Any]:
    """The JSON object the client sent (``{}`` for no body), read at most up to the bound."""
    limit = payload_limit + ENVELOPE_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(payload_limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(payload_limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput('the body must be a JSON object: {"payload": …, "options": {…}}')
    return body


@router.post(
    "/tasks/{task_id}/trigger",
    openapi_extra={"requestBody": TRIGGER_BODY},
    response_model=dict[str, Any],
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 503),
)
async def post_trigger(
    request: Request,
    task_id: str,
    x_slipway_branch: str | None = Depends(branch_header),
) -> JSONResponse:
    """Run a task and wait for its outcome: ``completed``, ``failed`` or ``timed_out``."""
    services = request.app.state.services
    limits = run_limits(request)
    body = await read_trigger_body(request, payload_limit=limits.payload_bytes)
    options = body.get("options") or {}
    try:
        outcome = await run_in_threadpool(
            trigger,
            services.db,
            services.runtime,
            key=bearer(request),
            branch=x_slipway_branch,
            task_id=task_id,
            payload=body.get("payload"),
            version=options.get("version") if isinstance(options, dict) else None,
            cipher=services.cipher,
            limits=limits,
        )
    except Unauthorized as exc:
        raise _unauthorized(exc) from None
    except PayloadTooLarge as exc:
        raise HTTPException(status_code=413, detail=str(exc)) from None
    return JSONResponse(outcome)  # already JSON values: FastAPI's encoding pass is skipped


@router.get("/runs/{run_id}", responses=error_responses(401, 403, 404))
def get_one_run(request: Request, run_id: str) -> dict[str, Any]:
    """A run, for the admin token or a key that could have triggered it."""
    services = request.app.state.services
    token = bearer(request)
    if token is None:
        raise _unauthorized(Unauthorized("missing bearer token"))
    admin = hmac.compare_digest(token.encode(), services.settings.admin_token.encode())
    try:
        return get_run(services.db, run_id, key=token, admin=admin)
    except Unauthorized as exc:
        raise _unauthorized(exc) from None
