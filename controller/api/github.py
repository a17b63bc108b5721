"""GitHub App set-up (the manifest flow) and status.

* ``POST /api/v1/github/setup`` (admin) issues a one-time set-up token and answers the
  page's URL; ``slipway github setup`` prints it. The token is the page's credential, as
  a sign-in link would be: whoever opens it may create the App, once, within 10 minutes.
* ``GET /github/setup?token=…`` consumes the token, issues a ``state`` and answers a page
  whose form posts the manifest to GitHub (submitted by a nonce'd script, or by hand).
* ``GET /github/callback?code=&state=`` consumes the state, exchanges the code (one call
  to GitHub, in the request's worker thread: a person is waiting for it) and stores the
  App encrypted; the webhook secret cache of this process is refreshed at once.
* ``GET /github/installed`` is where GitHub sends the person after an installation: the
  ``installation`` delivery records it, so the page only says what happens next.
* ``GET /api/v1/github/status`` (admin): the App (never its secrets), its installations
  and their repositories, asked of GitHub through the ``GitHubClient`` protocol.

A wrong, expired or reused token or state answers 403 with one general message: which
of them it was is not told. The pages send ``Referrer-Policy: no-referrer`` and
``Cache-Control: no-store`` (their URLs hold the token).
"""

from __future__ import annotations

import html
import json
import secrets
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from controller.api.auth import require_admin
from controller.api.errors import DESCRIPTIONS, ErrorBody, error_responses
from controller.errors import Forbidden, SlipwayError
from controller.github.app import StoredApp
from controller.github.client import GitHubClient, make_client
from controller.github.manifest import exchange_code, manifest, new_app_url, web_url
from controller.github.storage import (
    AppSecretCache,
    consume_token,
    issue_token,
    load_app,
    store_app,
)

api = APIRouter(
    prefix="/api/v1/github",
    dependencies=[Depends(require_admin)],
    tags=["github"],
    responses=error_responses(400, 401, 422),
)


def _json_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Error answers of the HTML pages: JSON like every error (a route's own
    ``response_class`` would otherwise document them as ``text/html``)."""
    schema = ErrorBody.model_json_schema()
    described = {**DESCRIPTIONS, 403: "The set-up link or state is wrong, expired or used"}
    return {
        code: {
            "description": described[code],
            "content": {"application/json": {"schema": schema}},
        }
        for code in codes
    }


pages = APIRouter(prefix="/github", tags=["github"], responses=_json_errors(403, 422))

REFUSED = "this set-up link is not valid (wrong, expired or already used): run `slipway github setup` again"


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    org: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}$")


def make_github_client(settings: Any, stored: StoredApp | None) -> GitHubClient | None:
    """The App's client (settings win over the stored App). Tests replace
    ``app.state.github_client``."""
    return make_client(settings, stored_app=stored)


def _services(request: Request) -> Any:
    return request.app.state.services


def _cache(request: Request) -> AppSecretCache:
    cache: AppSecretCache = request.app.state.github_apps
    return cache


def _page(
    title: str, body: str, *, nonce: str | None = None, form_action: str = "'none'"
) -> HTMLResponse:
    script = f"script-src 'nonce-{nonce}'" if nonce else "script-src 'none'"
    response = HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)} · Slipway</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; {script}; form-action {form_action}; base-uri 'none'; "
        "frame-ancestors 'none'"
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@api.post("/setup", status_code=201)
def create_setup_link(request: Request, body: SetupRequest) -> dict[str, Any]:
    """A one-time URL (10 minutes) of the page that creates the GitHub App."""
    services = _services(request)
    with services.db.transaction() as session:
        token = issue_token(session, kind="setup", org=body.org)
    url = f"{services.settings.public_url}/github/setup?token={token}"
    return {"url": url, "expires_in": 600, "org": body.org}


@pages.get("/setup", response_class=HTMLResponse)
def setup_page(request: Request, token: str = Query(max_length=200)) -> HTMLResponse:
    """The page that posts the App manifest to GitHub (one use)."""
    services = _services(request)
    with services.db.transaction() as session:
        row = consume_token(session, token, kind="setup")
        if row is None:
            raise Forbidden(REFUSED)
        org = row.org
        state = issue_token(session, kind="state", org=org)
    api_url = services.settings.github.github_api_url
    target = f"{new_app_url(api_url, org)}?state={state}"
    document = json.dumps(manifest(services.settings.public_url))
    nonce = secrets.token_urlsafe(16)
    where = f"organization {html.escape(org)}" if org else "your account"
    body = (
        f"<p>Create Slipway's GitHub App on {where}. GitHub asks you to confirm.</p>"
        f"<form id='manifest' method='post' action='{html.escape(target)}'>"
        f"<input type='hidden' name='manifest' value='{html.escape(document)}'>"
        "<button type='submit'>Create the GitHub App</button></form>"
        f"<script nonce='{nonce}'>document.getElementById('manifest').submit()</script>"
    )
    return _page("Create the GitHub App", body, nonce=nonce, form_action=web_url(api_url))


@pages.get("/callback", response_class=HTMLResponse, responses=_json_errors(400, 503))
def callback(
    request: Request, code: str = Query(max_length=200), state: str = Query(max_length=200)
) -> HTMLResponse:
    """GitHub's redirect after the App was created: exchange the code, store the App."""
    services = _services(request)
    with services.db.transaction() as session:
        if consume_token(session, state, kind="state") is None:
            raise Forbidden(REFUSED)
    app = exchange_code(services.settings.github.github_api_url, code)
    with services.db.transaction() as session:
        store_app(session, services.cipher, app)
    _cache(request).set(app)
    install = f"{app.html_url.rstrip('/')}/installations/new"
    body = (
        f"<p>GitHub App <b>{html.escape(app.slug)}</b> (id {app.app_id}) is set up; its "
        "private key and secrets are stored encrypted.</p>"
        f"<p><a href='{html.escape(install)}'>Install it on your repositories</a>.</p>"
    )
    return _page("GitHub App created", body)


@pages.get("/installed", response_class=HTMLResponse)
def installed() -> HTMLResponse:
    """Where GitHub sends a person after installing the App."""
    body = (
        "<p>The GitHub App is installed. GitHub tells Slipway which repositories it may "
        "reach; `slipway github status` lists them.</p>"
    )
    return _page("GitHub App installed", body)


@api.get("/status", responses=error_responses(503))
def status(request: Request) -> dict[str, Any]:
    """The App, its installations and their repositories."""
    services = _services(request)
    with services.db.read() as session:
        stored = load_app(session, services.cipher)
    factory = getattr(request.app.state, "github_client", None) or make_github_client
    client = factory(services.settings, stored)
    return describe_status(services.settings, stored, client)


def describe_status(
    settings: Any, stored: StoredApp | None, client: GitHubClient | None
) -> dict[str, Any]:
    app: dict[str, Any] | None = None
    if settings.github.github_app_id:
        app = {"id": settings.github.github_app_id, "source": "settings"}
    elif stored is not None:
        app = {
            "id": stored.app_id,
            "slug": stored.slug,
            "html_url": stored.html_url,
            "client_id": stored.client_id,
            "source": "manifest",
        }
    answer: dict[str, Any] = {"app": app, "installations": [], "error": None}
    if client is None:
        return answer
    try:
        info = client.app_info()
        if app is not None:
            app.update({k: info.get(k) for k in ("slug", "name", "html_url") if info.get(k)})
        for inst in client.installations():
            account = inst.get("account") if isinstance(inst.get("account"), dict) else {}
            repos = client.installation_repositories(int(inst["id"]))
            answer["installations"].append(
                {
                    "id": inst["id"],
                    "account": (account or {}).get("login"),
                    "suspended": bool(inst.get("suspended_at")),
                    "repositories": sorted(str(r.get("full_name")) for r in repos),
                }
            )
    except SlipwayError as exc:
        answer["error"] = exc.message
    return answer
