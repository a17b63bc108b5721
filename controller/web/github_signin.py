"""Sign in with GitHub: ``/auth/github/login`` and ``/auth/github/callback``.

``login`` sends the browser to GitHub's authorize page with a random ``state`` and a PKCE
challenge, and remembers the state in a short-lived cookie (:data:`STATE_TTL`, path
``/auth/github``) signed like the session cookie: ``<expires>.<state>.<next>.<mac>``.
The PKCE verifier is not stored anywhere: it is an HMAC of the state under a key of its
own (derived from the admin token), so only this server can compute it again. The cookie
is ``SameSite=Lax``: GitHub's redirect back is a top-level GET, which carries it.

``callback`` refuses (403) unless the ``state`` GitHub returns equals the signed
cookie's; a forged or replayed callback from another browser has no such cookie. It
then trades the code on GitHub's web host for the person's token, reads who they are
with that token, stores the session's record (:mod:`controller.web.signin_records`:
login and encrypted token) and sets the session cookie, of kind ``g1``. The cookie holds
only the signed session id, never the token. The session ends with the user token when
GitHub gives it an expiry (GitHub App user tokens live eight hours unless the App opts
out; they are not refreshed), else after the usual :data:`~controller.web.session.LIFETIME`.

These handlers are plain functions (FastAPI runs them in a thread): the exchange and the
``GET /user`` are blocking calls to GitHub while a person waits.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from controller.errors import SlipwayError
from controller.github.manifest import web_url
from controller.github.oauth import authorize_url, exchange_user_code, fetch_user
from controller.web.pages import _error, _forbidden, _render, _safe_next, _settings, render_login
from controller.web.session import (
    GITHUB,
    LIFETIME,
    issue_cookie,
    set_session_cookie,
    sign,
)
from controller.web.signin_records import oauth_app, store_signin

router = APIRouter(include_in_schema=False)

STATE_COOKIE = "slipway_github_state"
STATE_PATH = "/auth/github"
STATE_TTL = 600
CALLBACK = "/auth/github/callback"


@dataclass(frozen=True)
class PendingSignin:
    state: str
    next: str


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def issue_state(admin_token: str, *, state: str, next_page: str, now: float | None = None) -> str:
    body = f"{int((now or time.time()) + STATE_TTL)}.{state}.{_encode(next_page)}"
    return f"{body}.{sign(admin_token, 'github-state', body)}"


def read_state(
    admin_token: str, cookie: str | None, *, now: float | None = None
) -> PendingSignin | None:
    if not cookie or cookie.count(".") != 3:
        return None
    body, _, mac = cookie.rpartition(".")
    if not hmac.compare_digest(mac, sign(admin_token, "github-state", body)):
        return None
    expires, state, encoded = body.split(".")
    if not expires.isdigit() or int(expires) < (now or time.time()):
        return None
    try:
        next_page = _decode(encoded)
    except ValueError:
        return None
    return PendingSignin(state=state, next=_safe_next(next_page))


def pkce_verifier(admin_token: str, state: str) -> str:
    return sign(admin_token, "github-pkce", state)


def _secure(request: Request) -> bool:
    return str(_settings(request).public_url).lower().startswith("https://")


def _no_signin(request: Request) -> Response:
    return _render(
        request,
        "error.html",
        {"message": "Sign in with GitHub needs the GitHub App set up", "hint": None},
        session=None,
        status_code=404,
    )


@router.get("/auth/github/login")
def github_login(request: Request, next: str | None = None) -> Response:
    """Send the browser to GitHub to sign in."""
    app = oauth_app(request)
    if app is None:
        return _no_signin(request)
    settings = _settings(request)
    state = secrets.token_urlsafe(24)
    target = authorize_url(
        web=web_url(settings.github.github_api_url),
        client_id=app.client_id,
        redirect_uri=f"{settings.public_url}{CALLBACK}",
        state=state,
        verifier=pkce_verifier(settings.admin_token, state),
    )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        STATE_COOKIE,
        issue_state(settings.admin_token, state=state, next_page=_safe_next(next)),
        max_age=STATE_TTL,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path=STATE_PATH,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get(CALLBACK)
def github_callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
) -> Response:
    """GitHub's redirect after the person signed in (or declined)."""
    settings = _settings(request)
    pending = read_state(settings.admin_token, request.cookies.get(STATE_COOKIE))
    if pending is None or not state or not hmac.compare_digest(state, pending.state):
        return _forbidden(
            request, "sign-in refused: this sign-in was not started here, or took too long"
        )
    app = oauth_app(request)
    if app is None:
        return _no_signin(request)
    if error or not code:
        return render_login(
            request,
            next_page=pending.next,
            notice="GitHub did not sign you in (declined or cancelled).",
            status_code=401,
        )
    api_url = settings.github.github_api_url
    try:
        granted = exchange_user_code(
            web=web_url(api_url),
            client_id=app.client_id,
            client_secret=app.client_secret,
            code=code[:200],
            verifier=pkce_verifier(settings.admin_token, pending.state),
            redirect_uri=f"{settings.public_url}{CALLBACK}",
        )
        user = fetch_user(api_url, granted.token)
    except SlipwayError as exc:
        return _error(request, None, exc)
    lifetime = min(LIFETIME, granted.expires_in or LIFETIME)
    session_id = secrets.token_urlsafe(18)
    services = request.app.state.services
    with services.db.transaction() as db:
        store_signin(
            db,
            services.cipher,
            session_id=session_id,
            login=user.login,
            github_user_id=user.id,
            token=granted.token,
            lifetime=lifetime,
        )
    response = RedirectResponse(pending.next, status_code=303)
    cookie = issue_cookie(settings.admin_token, kind=GITHUB, nonce=session_id, lifetime=lifetime)
    set_session_cookie(response, cookie, public_url=settings.public_url, max_age=lifetime)
    response.delete_cookie(
        STATE_COOKIE, path=STATE_PATH, httponly=True, samesite="lax", secure=_secure(request)
    )
    return response
