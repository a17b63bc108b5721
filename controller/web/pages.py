"""Pages for people at ``/``: server-rendered Jinja2 templates over the API's read functions.

Every page reads without JavaScript; a running deployment's log follows along with a
small inline script that polls ``/deployments/{id}/log?after=N`` (a ``<noscript>``
refresh does the same without it). Polling, not server-sent events: it needs no
long-lived connection per viewer and the log endpoint is the API's own, paged by line id.

Each response carries a Content-Security-Policy whose nonce is the only way a script or
style block runs, ``frame-ancestors 'none'`` and ``form-action 'self'``. Sign-in and CSRF
are :mod:`controller.web.session`; Sign in with GitHub is
:mod:`controller.web.github_signin`, and what a person signed in with GitHub may see and
promote is :mod:`controller.web.access` (every handler naming a project, deployment or
run asks it; an admin session sees everything). Handlers that change state are
``async`` only to read the form; promotion itself (it waits for a worker's health check)
and any database read of theirs run in a thread.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, RedirectResponse, Response

from controller.errors import Conflict, InvalidInput, NotFound, SlipwayError, TemporaryError
from controller.github.oauth import UserTokenRejected
from controller.models import ACTIVE_STATUSES, normalise_environment
from controller.web import access, overview, reads
from controller.web.session import (
    COOKIE,
    GITHUB,
    WebSession,
    check_admin_token,
    clear_session_cookie,
    csrf_ok,
    issue_cookie,
    read_session,
    same_origin,
    set_session_cookie,
)
from controller.web.signin_records import delete_signin, load_signin, oauth_app

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals["duration"] = reads.duration_seconds
templates.env.globals["active_statuses"] = ACTIVE_STATUSES
templates.env.globals["previews_per_page"] = overview.PREVIEWS_PER_PAGE
templates.env.globals["shown_deployments"] = overview.SHOWN_DEPLOYMENTS

router = APIRouter(include_in_schema=False)

_ERROR_STATUS: list[tuple[type[SlipwayError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (InvalidInput, 422),
    (TemporaryError, 503),
]


def _settings(request: Request) -> Any:
    return request.app.state.services.settings


def _session(request: Request) -> WebSession | None:
    session = read_session(_settings(request).admin_token, request.cookies.get(COOKIE))
    if session is None or session.kind != GITHUB:
        return session
    services = request.app.state.services
    with services.db.read() as db:
        signed_in = load_signin(db, services.cipher, session.nonce)
    if signed_in is None:
        return None
    return session.with_user(login=signed_in.login, token=signed_in.token)


def _render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    session: WebSession | None,
    status_code: int = 200,
) -> Response:
    nonce = secrets.token_urlsafe(16)
    response = templates.TemplateResponse(
        request,
        name,
        {**context, "session": session, "csrf": session.csrf if session else "", "nonce": nonce},
        status_code=status_code,
    )
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/?next={quote(target)}", status_code=303)


def _signed_out(request: Request, session: WebSession | None) -> Response:
    """End a session (its record too) and go to the sign-in page."""
    if session is not None and session.kind == GITHUB:
        with request.app.state.services.db.transaction() as db:
            delete_signin(db, session.nonce)
        if session.user_token:
            access.push_access(request).forget(session.user_token)
    response = RedirectResponse("/", status_code=303)
    clear_session_cookie(response, public_url=_settings(request).public_url)
    return response


def _error(request: Request, session: WebSession | None, exc: SlipwayError) -> Response:
    if isinstance(exc, UserTokenRejected):
        return _signed_out(request, session)
    status = next((code for cls, code in _ERROR_STATUS if isinstance(exc, cls)), 400)
    return _render(
        request,
        "error.html",
        {"message": exc.message, "hint": exc.hint},
        session=session,
        status_code=status,
    )


def _forbidden(request: Request, reason: str) -> Response:
    return _render(
        request, "error.html", {"message": reason, "hint": None}, session=None, status_code=403
    )


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


# -- sign-in ---------------------------------------------------------------------------


@router.get("/")
def home(request: Request, next: str | None = None) -> Response:
    session = _session(request)
    if session is None:
        return render_login(request, next_page=_safe_next(next))
    try:
        projects = access.visible_projects(request, session, reads.projects(request))
    except SlipwayError as exc:
        return _error(request, session, exc)
    return _render(request, "projects.html", {"projects": projects}, session=session)


def render_login(
    request: Request,
    *,
    next_page: str,
    failed: bool = False,
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    context = {
        "next": next_page,
        "failed": failed,
        "notice": notice,
        "github": oauth_app(request) is not None,
    }
    return _render(request, "login.html", context, session=None, status_code=status_code)


@router.post("/login")
async def login(request: Request) -> Response:
    settings = _settings(request)
    if not same_origin(request, public_url=settings.public_url):
        return _forbidden(request, "sign-in refused: the form was posted from another site")
    form = await request.form()
    token = str(form.get("token") or "")
    target = _safe_next(str(form.get("next") or "/"))
    if not check_admin_token(settings.admin_token, token):
        return await run_in_threadpool(
            lambda: render_login(request, next_page=target, failed=True, status_code=401)
        )
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, issue_cookie(settings.admin_token), public_url=settings.public_url)
    return response


async def _checked_form(request: Request) -> tuple[WebSession | None, Any, Response | None]:
    """The session and form of a state-changing POST, or the 403 that refuses it."""
    session = await run_in_threadpool(_session, request)
    if not same_origin(request, public_url=_settings(request).public_url):
        return session, None, _forbidden(request, "refused: the form was posted from another site")
    form = await request.form()
    if session is None:
        return None, form, _forbidden(request, "refused: sign in first")
    if not csrf_ok(session, str(form.get("csrf") or "")):
        return (
            session,
            form,
            _forbidden(
                request, "refused: the form's CSRF token is missing or stale; reload the page"
            ),
        )
    return session, form, None


@router.post("/logout")
async def logout(request: Request) -> Response:
    session, _f, refused = await _checked_form(request)
    if refused is not None:
        return refused
    return await run_in_threadpool(_signed_out, request, session)


# -- reading -----------------------------------------------------------------------------


@router.get("/projects/{ref}")
def project_page(request: Request, ref: str, previews: str = "1") -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    page = int(previews) if previews.isdigit() else 1
    try:
        access.require_project(request, session, ref)
        context = overview.project_overview(request, ref, preview_page=page)
    except SlipwayError as exc:
        return _error(request, session, exc)
    return _render(request, "project.html", context, session=session)


@router.get("/projects/{ref}/environments/{env}")
def environment_page(request: Request, ref: str, env: str, branch: str | None = None) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    try:
        name = normalise_environment(env)
        access.require_project(request, session, ref)
        project = reads.project(request, ref)
        target = branch if name == "preview" else None
        environment = reads.environment(request, ref, name, target)
        versions = reads.versions(request, ref, name, target)
        deployments = reads.deployments(request, ref, env=name, branch=target)
    except ValueError as exc:
        return _render(
            request,
            "error.html",
            {"message": str(exc), "hint": None},
            session=session,
            status_code=422,
        )
    except SlipwayError as exc:
        return _error(request, session, exc)
    if environment is None:
        return _render(
            request,
            "error.html",
            {"message": "no such environment", "hint": None},
            session=session,
            status_code=404,
        )
    context = {
        "project": project,
        "environment": environment,
        "versions": versions[: reads.SHOWN_VERSIONS],
        "version_count": len(versions),
        "deployments": deployments,
        "runs": reads.recent_runs(request, environment["id"]),
        "envvars": reads.envvar_rows(request, ref, environment),
        "can_roll_back": {environment["id"]}
        if overview.can_roll_back(request, environment["id"])
        else set(),
    }
    return _render(request, "environment.html", context, session=session)


@router.get("/deployments/{deployment_id}")
def deployment_page(request: Request, deployment_id: str) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    try:
        access.require_deployment(request, session, deployment_id)
        deployment = reads.deployment(request, deployment_id)
        logs = reads.deployment_logs(request, deployment_id)
    except SlipwayError as exc:
        return _error(request, session, exc)
    context = {
        "deployment": deployment,
        "lines": logs["lines"],
        "active": deployment["status"] in ACTIVE_STATUSES,
    }
    return _render(request, "deployment.html", context, session=session)


@router.get("/deployments/{deployment_id}/log")
def deployment_log(request: Request, deployment_id: str, after: int = 0) -> Response:
    """The lines after ``after``, for the page's log follower (session, not bearer)."""
    session = _session(request)
    if session is None:
        return JSONResponse({"error": "sign in first"}, status_code=401)
    try:
        access.require_deployment(request, session, deployment_id)
        logs = reads.deployment_logs(request, deployment_id, after=after)
    except SlipwayError as exc:
        return JSONResponse({"error": exc.message}, status_code=404)
    return JSONResponse({**logs, "active": logs["status"] in ACTIVE_STATUSES})


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    try:
        access.require_run(request, session, run_id)
        run = reads.run(request, run_id)
    except SlipwayError as exc:
        return _error(request, session, exc)
    return _render(request, "run.html", {"run": run}, session=session)


# -- promote and roll back ---------------------------------------------------------------


def _back(ref: str, form: Any) -> str:
    back = str(form.get("back") or "")
    return back if back and _safe_next(back) == back else f"/projects/{quote(ref)}"


@router.post("/projects/{ref}/environments/{env}/rollback")
async def rollback(request: Request, ref: str, env: str) -> Response:
    session, form, refused = await _checked_form(request)
    if refused is not None:
        return refused
    assert session is not None
    branch = str(form.get("branch") or "") or None
    try:
        await run_in_threadpool(access.require_project, request, session, ref)
        await run_in_threadpool(reads.rollback, request, ref, env, branch)
    except SlipwayError as exc:
        return _error(request, session, exc)
    return RedirectResponse(_back(ref, form), status_code=303)


@router.post("/projects/{ref}/environments/{env}/promote")
async def promote(request: Request, ref: str, env: str) -> Response:
    session, form, refused = await _checked_form(request)
    if refused is not None:
        return refused
    assert session is not None
    branch = str(form.get("branch") or "") or None
    version = str(form.get("version") or "").strip()
    try:
        await run_in_threadpool(access.require_project, request, session, ref)
        await run_in_threadpool(reads.promote, request, ref, env, branch=branch, version=version)
    except SlipwayError as exc:
        return _error(request, session, exc)
    return RedirectResponse(_back(ref, form), status_code=303)
