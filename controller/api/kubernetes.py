"""Kubernetes: the manifests the runtime applies (admin), and version bundles (bundle token).

``GET /api/v1/projects/{ref}/environments/{env}/manifests?version=&branch=`` answers the
objects as a JSON array (``slipway kubernetes manifests`` prints them as YAML); it needs
no cluster and works whatever ``SLIPWAY_RUNTIME`` is. ``GET /api/v1/bundles/{digest}``
is what the pods' init container fetches: it takes only an environment's bundle token
(``Authorization: Bearer sbt_…``, see :mod:`controller.bundles`) and serves only that
environment's bundles; anything else is 404 or 401, never a hint of other bundles.
Any replica answers it from the database (:mod:`controller.store.bundles`), streamed a
chunk at a time; a bundle never changes under its digest, so its answer carries the
digest as ``ETag`` and ``Cache-Control: immutable`` (``private``: it needs a token).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse

from controller.api.auth import bearer, require_admin
from controller.api.branches import branch_header
from controller.api.errors import EnvName, ProjectRef, error_responses
from controller.bundles import token_environment, valid_digest
from controller.manifests import environment_manifests
from controller.store.bundles import bundle_allowed, iter_chunks, stored_bundle

router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_admin)],
    tags=["kubernetes"],
    responses=error_responses(400, 401, 404, 422),
)
bundles = APIRouter(prefix="/api/v1", tags=["kubernetes"])


@router.get("/projects/{ref}/environments/{env}/manifests")
def manifests(
    request: Request,
    ref: ProjectRef,
    env: EnvName,
    version: str | None = Query(default=None, pattern=r"^[0-9]+(\.[0-9]+)*$"),
    branch: str | None = None,
    x_slipway_branch: str | None = Depends(branch_header),
) -> list[dict[str, Any]]:
    services = request.app.state.services
    return environment_manifests(
        services.settings,
        db=services.db,
        cipher=services.cipher,
        ref=ref,
        environment=env,
        branch=branch or x_slipway_branch,
        version=version,
    )


@bundles.get(
    "/bundles/{digest}",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the bundle (an uncompressed tar whose sha256 is the digest)",
        },
        304: {"description": "the bundle named in If-None-Match"},
        **error_responses(401, 404),
    },
)
def bundle(request: Request, digest: str) -> Response:
    services = request.app.state.services
    token = bearer(request)
    environment_id = token_environment(services.settings.encryption_keys, token or "")
    if environment_id is None:
        raise HTTPException(
            status_code=401,
            detail="missing or invalid bundle token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    db = services.db
    stored = stored_bundle(db, digest) if valid_digest(digest) else None
    if stored is None or not bundle_allowed(db, environment_id=environment_id, digest=digest):
        raise HTTPException(status_code=404, detail="no such bundle")
    headers = {"ETag": f'"{digest}"', "Cache-Control": "private, max-age=31536000, immutable"}
    if f'"{digest}"' in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return StreamingResponse(
        iter_chunks(db, digest=digest, chunks=stored.chunks),
        media_type="application/x-tar",
        headers={**headers, "Content-Length": str(stored.size)},
    )
