"""Sign-in for the pages: the admin token once, then a signed session cookie; CSRF tokens.

The cookie is not the token and holds no secret: ``<kind>.<expires>.<nonce>.<mac>``,
where ``mac`` is an HMAC-SHA256 of ``<kind>.<expires>.<nonce>`` under a key derived from
the admin token. ``kind`` is ``v1`` for the admin token's session and ``g1`` for a person
signed in with GitHub (:mod:`controller.web.github_signin`); the MAC covers it, so one
cannot be turned into the other. An admin session stores nothing server-side, so it
works across the web process's restarts and across replicas, and rotating the admin
token ends every session at once (the only way to revoke one; "Sign out" deletes the
cookie in that browser). A GitHub session's nonce is the id of its server-side record
(login and encrypted user token); signing out deletes that record too. The cookie is
``HttpOnly``, ``SameSite=Lax``, and ``Secure`` when ``SLIPWAY_PUBLIC_URL`` is https.

Every form carries a CSRF token, an HMAC of the session's nonce under a second derived
key (a synchronizer token that needs no storage). A POST is refused with 403 unless its
token matches its session, and unless its ``Origin`` (or, without one, ``Referer``) is
this server: the request's own host or ``SLIPWAY_PUBLIC_URL``. The sign-in form itself
has no session yet; it is protected by the same origin check, and posting it needs the
admin token anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "slipway_session"
LIFETIME = 12 * 3600
ADMIN = "v1"
GITHUB = "g1"


@dataclass(frozen=True)
class WebSession:
    """A signed-in browser; ``login`` and ``user_token`` are a ``g1`` session's, from its
    server-side record (:meth:`with_user`), ``None`` for the admin."""

    nonce: str
    expires: int
    csrf: str
    kind: str = ADMIN
    login: str | None = None
    user_token: str | None = field(default=None, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.kind == ADMIN

    def with_user(self, *, login: str, token: str) -> WebSession:
        return replace(self, login=login, user_token=token)


def _key(admin_token: str, purpose: str) -> bytes:
    return hmac.new(
        admin_token.encode(), f"slipway-web-{purpose}".encode(), hashlib.sha256
    ).digest()


def _mac(admin_token: str, purpose: str, message: str) -> str:
    return hmac.new(_key(admin_token, purpose), message.encode(), hashlib.sha256).hexdigest()


def check_admin_token(admin_token: str, given: str) -> bool:
    return bool(given) and hmac.compare_digest(given.strip().encode(), admin_token.encode())


def issue_cookie(
    admin_token: str,
    *,
    now: float | None = None,
    kind: str = ADMIN,
    nonce: str | None = None,
    lifetime: int = LIFETIME,
) -> str:
    expires = int((now or time.time()) + lifetime)
    body = f"{kind}.{expires}.{nonce or secrets.token_urlsafe(18)}"
    return f"{body}.{_mac(admin_token, 'session', body)}"


def read_session(
    admin_token: str, cookie: str | None, *, now: float | None = None
) -> WebSession | None:
    if not cookie or cookie.count(".") != 3:
        return None
    body, _, mac = cookie.rpartition(".")
    if not hmac.compare_digest(mac, _mac(admin_token, "session", body)):
        return None
    kind, expires_text, nonce = body.split(".")
    if kind not in (ADMIN, GITHUB):
        return None
    if not expires_text.isdigit() or int(expires_text) < (now or time.time()):
        return None
    return WebSession(
        nonce=nonce, expires=int(expires_text), csrf=_mac(admin_token, "csrf", nonce), kind=kind
    )


def sign(admin_token: str, purpose: str, message: str) -> str:
    """An HMAC of ``message`` under a key of its own ``purpose`` (the sign-in's state)."""
    return _mac(admin_token, purpose, message)


def set_session_cookie(
    response: Response, cookie: str, *, public_url: str, max_age: int = LIFETIME
) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=public_url.lower().startswith("https://"),
        path="/",
    )


def clear_session_cookie(response: Response, *, public_url: str) -> None:
    response.delete_cookie(
        COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=public_url.lower().startswith("https://"),
    )


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request, *, public_url: str) -> bool:
    """True when the request's ``Origin`` (or ``Referer``) is this server."""
    claimed = request.headers.get("origin")
    if not claimed or claimed == "null":
        referer = request.headers.get("referer")
        if not referer:
            return claimed is None  # a non-browser client sends neither; the CSRF token decides
        claimed = referer
    allowed = {_origin_of(public_url), _origin_of(str(request.base_url))}
    return _origin_of(claimed) in allowed


def csrf_ok(session: WebSession | None, given: str | None) -> bool:
    return session is not None and bool(given) and hmac.compare_digest(session.csrf, given or "")
