"""Sign in with GitHub: the App's OAuth client, the web flow, and who may push where.

The GitHub App the manifest flow stored has an OAuth client (``client_id`` and
``client_secret``). The web flow
(https://docs.github.com/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-user-access-token-for-a-github-app):
the browser goes to ``<web>/login/oauth/authorize`` with the client id, the callback URL,
a ``state`` and a PKCE ``code_challenge`` (S256); GitHub sends it back with ``code`` and
``state``; ``POST <web>/login/oauth/access_token`` with the client secret, the code and
the PKCE verifier answers a user access token. Both endpoints are on GitHub's *web* host
(github.com, or the Enterprise Server's host), not in the REST API, so they use httpx
directly here, as the manifest exchange does. GitHub answers a refused code with ``200``
and an ``error`` field; only that field's code (``bad_verification_code``…) is quoted,
never the body, which holds the token when it succeeds.

With the user's token, PyGithub reads ``GET /user`` (who signed in) and
``GET /repos/{owner}/{repo}``: a user-to-server token sees a repository only where the
App is installed *and* the person has access, and the answer's ``permissions.push`` is
the person's own. A 404 or 403 means no access; a 401 means the token was revoked or
has expired (:class:`UserTokenRejected`: the session ends).

:class:`PushAccess` keeps each answer per (token, repository) for :data:`ACCESS_TTL`
seconds: a person whose push access is removed on GitHub loses the project within a
minute, and a page that lists projects costs at most one call per project per minute.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from controller.errors import PermanentError, TemporaryError
from controller.github.client import token_client
from controller.github.errors import GitHubRejected, map_github_error
from controller.github.metering import METER, metered

ACCESS_TTL = 60.0
MAX_CACHED = 10_000
EXCHANGE_TIMEOUT = 30.0


class UserTokenRejected(PermanentError):
    """GitHub no longer accepts the person's token (revoked, expired): sign in again."""


@dataclass(frozen=True)
class UserToken:
    token: str = field(repr=False)
    expires_in: int | None


@dataclass(frozen=True)
class GitHubUser:
    login: str
    id: int


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def authorize_url(*, web: str, client_id: str, redirect_uri: str, state: str, verifier: str) -> str:
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
            "allow_signup": "false",
        }
    )
    return f"{web.rstrip('/')}/login/oauth/authorize?{query}"


def exchange_user_code(
    *,
    web: str,
    client_id: str,
    client_secret: str,
    code: str,
    verifier: str,
    redirect_uri: str,
    transport: httpx.BaseTransport | None = None,
) -> UserToken:
    """Trade the web flow's ``code`` for the person's access token."""
    try:
        with httpx.Client(timeout=EXCHANGE_TIMEOUT, trust_env=False, transport=transport) as client:
            response = client.post(
                f"{web.rstrip('/')}/login/oauth/access_token",
                data={
                    "client_id": client_id,
                    "client_secret": client_secret,
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": verifier,
                },
                headers={"Accept": "application/json"},
            )
    except httpx.HTTPError as exc:
        METER.record("POST", None)
        raise TemporaryError(
            f"could not reach GitHub to finish the sign-in ({type(exc).__name__})"
        ) from exc
    METER.record("POST", response.status_code)
    if response.status_code >= 500:
        raise TemporaryError(f"GitHub answered {response.status_code} to the sign-in")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        raise PermanentError(f"GitHub refused the sign-in ({response.status_code})")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        error = str(body.get("error") or "no token")[:60]
        raise PermanentError(
            f"GitHub refused the sign-in code ({quote(error, safe='_-')})",
            hint="sign in again; a code is valid once, for ten minutes",
        )
    expires_in = body.get("expires_in")
    return UserToken(token=token, expires_in=expires_in if isinstance(expires_in, int) else None)


def _get(api_url: str, token: str, path: str, *, doing: str) -> Any:
    client = token_client(api_url, token)
    try:
        with metered("GET"):
            _, data = client.requester.requestJsonAndCheck("GET", path)
    except Exception as exc:
        error = map_github_error(exc, doing=doing)
        if isinstance(error, GitHubRejected) and error.status == 401:
            raise UserTokenRejected(
                "GitHub no longer accepts this sign-in", hint="sign in with GitHub again"
            ) from None
        raise error from None
    finally:
        client.close()
    return data


def fetch_user(api_url: str, token: str) -> GitHubUser:
    data = _get(api_url, token, "/user", doing="reading who signed in")
    if not isinstance(data, dict) or not isinstance(data.get("login"), str):
        raise PermanentError("GitHub's answer to GET /user has no login")
    return GitHubUser(login=data["login"], id=int(data.get("id") or 0))


def fetch_push_access(api_url: str, token: str, repo: str) -> bool:
    """Whether the token's person may push to ``repo`` (``owner/name``)."""
    owner, _, name = repo.partition("/")
    if not owner or not name or "/" in name:
        return False
    path = f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"
    try:
        data = _get(api_url, token, path, doing=f"checking access to {repo}")
    except GitHubRejected as exc:
        if exc.status in (403, 404):
            return False
        raise
    permissions = data.get("permissions") if isinstance(data, dict) else None
    return isinstance(permissions, dict) and permissions.get("push") is True


class PushAccess:
    """Push access per (token, repository), each answer kept :data:`ACCESS_TTL` seconds.

    Keys hold the token's SHA-256, not the token. Thread-safe; at most :data:`MAX_CACHED`
    answers (the oldest go first)."""

    def __init__(
        self,
        *,
        api_url: Callable[[], str],
        fetch: Callable[[str, str, str], bool] = fetch_push_access,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = ACCESS_TTL,
    ) -> None:
        self._api_url = api_url
        self._fetch = fetch
        self._clock = clock
        self._ttl = ttl
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple[str, str], tuple[bool, float]] = OrderedDict()

    def can_push(self, token: str, repo: str) -> bool:
        key = (hashlib.sha256(token.encode()).hexdigest(), repo.lower())
        now = self._clock()
        with self._lock:
            cached = self._answers.get(key)
            if cached is not None and now - cached[1] < self._ttl:
                return cached[0]
        allowed = self._fetch(self._api_url(), token, repo)
        with self._lock:
            self._answers[key] = (allowed, now)
            self._answers.move_to_end(key)
            while len(self._answers) > MAX_CACHED:
                self._answers.popitem(last=False)
        return allowed

    def forget(self, token: str) -> None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            for key in [k for k in self._answers if k[0] == digest]:
                del self._answers[key]
