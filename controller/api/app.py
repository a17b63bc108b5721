"""The FastAPI application: webhook receiver, management API, run triggers, pages.

Request handlers do one short transaction each; everything slow (git, builds, GitHub,
Kubernetes) runs in the controller's worker threads, off the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller import __version__
from controller.api.openapi import allowed_methods, document_webhook
from controller.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PermanentError,
    SlipwayError,
    TemporaryError,
)
from controller.github.storage import AppSecretCache
from controller.metrics import count_deliveries, make_metrics_endpoint
from webhooks.receiver import make_endpoint

log = logging.getLogger(__name__)

_STATUS = [
    (NotFound, 404),
    (Forbidden, 403),
    (Conflict, 409),
    (InvalidInput, 422),
    (TemporaryError, 503),
    (PermanentError, 400),
]


def _error_body(message: str, hint: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if hint:
        body["hint"] = hint
    return body


def create_app(services: Any, *, manage_lifecycle: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            services.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                services.stop()

    app = FastAPI(
        title="Slipway",
        version=__version__,
        description="Self-hosted GitOps deploy controller for background-task workers.",
        lifespan=lifespan,
    )
    app.state.services = services
    # The manifest-flow App's webhook secret, cached for the hot path (controller.github.storage).
    github_apps = AppSecretCache(db=lambda: services.db, cipher=lambda: services.cipher)
    app.state.github_apps = github_apps

    @app.exception_handler(SlipwayError)
    async def _slipway_error(_request: Request, exc: SlipwayError) -> JSONResponse:
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
        return JSONResponse(_error_body(exc.message, exc.hint), status_code=status)

    @app.exception_handler(ValueError)
    async def _value_error(_request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(_error_body(str(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(app, request.url.path)
        return JSONResponse(
            _error_body(str(exc.detail)), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse(_error_body("invalid request: " + "; ".join(parts)), status_code=422)

    # A plain Starlette route: the hot path skips FastAPI's per-request dependency
    # solving. Its OpenAPI operation is written by hand (controller/api/openapi.py).
    document_webhook(app)
    app.add_route(
        "/webhooks/github",
        count_deliveries(
            make_endpoint(
                secret=lambda: services.settings.webhook_secret or github_apps.webhook_secret(),
                writer=lambda: services.writer,
                body_timeout=lambda: services.settings.github.webhook_body_timeout,
            )
        ),
        methods=["POST"],
        include_in_schema=False,
    )

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        problems = []
        try:
            with services.db.read() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            problems.append(f"database: {type(exc).__name__}")
        problems += services.readiness_problems()
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    app.add_route(
        "/metrics", make_metrics_endpoint(services), methods=["GET"], include_in_schema=False
    )

    from controller.api import deployments, envvars, github, kubernetes, projects, runs, versions
    from controller.web import github_signin, pages

    app.include_router(projects.router)
    app.include_router(deployments.router)
    app.include_router(versions.router)
    app.include_router(runs.router)
    app.include_router(envvars.router)
    app.include_router(kubernetes.router)
    app.include_router(kubernetes.bundles)
    app.include_router(github.api)
    app.include_router(github.pages)
    app.include_router(github_signin.router)
    app.include_router(pages.router)
    return app
