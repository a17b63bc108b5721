"""Running tasks with an environment's secret key (``Authorization: Bearer sk_…``)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from controller.api.auth import bearer
from controller.api.branches import branch_header
from controller.runs import Unauthorized, get_run, trigger

router = APIRouter(prefix="/api/v1", tags=["runs"])


def _unauthorized(exc: Unauthorized) -> HTTPException:
    return HTTPException(status_code=401, detail=str(exc), headers={"WWW-Authenticate": "Bearer"})


@router.post("/tasks/{task_id}/trigger")
async def post_trigger(
    request: Request,
    task_id: str,
    body: dict[str, Any] = Body(default_factory=dict),
    x_slipway_branch: str | None = Depends(branch_header),
) -> dict[str, Any]:
    """Run a task and wait for its outcome: ``completed``, ``failed`` or ``timed_out``."""
    services = request.app.state.services
    options = body.get("options") or {}
    try:
        return await run_in_threadpool(
            trigger,
            services.db,
            services.runtime,
            key=bearer(request),
            branch=x_slipway_branch,
            task_id=task_id,
            payload=body.get("payload"),
            version=options.get("version") if isinstance(options, dict) else None,
        )
    except Unauthorized as exc:
        raise _unauthorized(exc) from None


@router.get("/runs/{run_id}")
def get_one_run(request: Request, run_id: str) -> dict[str, Any]:
    services = request.app.state.services
    token = bearer(request)
    admin = token is not None and hmac.compare_digest(
        token.encode(), services.settings.admin_token.encode()
    )
    if token is None:
        raise _unauthorized(Unauthorized("missing bearer token"))
    return get_run(services.db, run_id, key=token, admin=admin)
