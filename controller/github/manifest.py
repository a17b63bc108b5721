"""GitHub's App manifest flow: the manifest, where to post it, and the code exchange.

The flow (https://docs.github.com/apps/sharing-github-apps/registering-a-github-app-from-a-manifest):
a page posts ``manifest`` (JSON) to ``<web>/settings/apps/new?state=…`` (or
``<web>/organizations/<org>/settings/apps/new``); the person confirms on GitHub; GitHub
redirects to ``redirect_url`` with ``code`` and ``state``; ``POST
/app-manifests/{code}/conversions`` (no authentication: the one-hour code is the
credential) answers with the App's id, slug, private key (``pem``), webhook secret and
client secret.

The exchange uses httpx directly, here only: it needs no App identity, so it cannot go
through the App's client. Errors name the HTTP status only; the answer's body can hold
the private key, so it is never logged or quoted.

``installation`` and ``installation_repositories`` are not in ``default_events``: GitHub
delivers them to every App and refuses a manifest that asks for them ("Default events
unsupported: installation").
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from controller.errors import PermanentError, TemporaryError
from controller.github.app import StoredApp

PERMISSIONS = {
    "contents": "read",
    "metadata": "read",
    "deployments": "write",
    "checks": "write",
    "pull_requests": "write",
    "statuses": "read",
}
EVENTS = ["push", "pull_request", "delete", "deployment_status", "check_run"]
ALWAYS_DELIVERED = ["installation", "installation_repositories"]
EXCHANGE_TIMEOUT = 30.0
MAX_NAME = 34  # GitHub's limit for an App's name


def web_url(api_url: str) -> str:
    """GitHub's web address for its API address: github.com, or ``https://HOST`` for a
    GitHub Enterprise Server at ``https://HOST/api/v3``."""
    api = api_url.rstrip("/")
    parts = urlsplit(api)
    if parts.netloc.lower() == "api.github.com":
        return "https://github.com"
    path = parts.path.removesuffix("/api/v3")
    return f"{parts.scheme}://{parts.netloc}{path}"


def new_app_url(api_url: str, org: str | None) -> str:
    base = web_url(api_url)
    if org:
        return f"{base}/organizations/{quote(org, safe='')}/settings/apps/new"
    return f"{base}/settings/apps/new"


def manifest(public_url: str) -> dict[str, Any]:
    """The App's manifest for a Slipway reachable at ``public_url``."""
    public = public_url.rstrip("/")
    host = urlsplit(public).hostname or "local"
    return {
        "name": f"slipway-{host}"[:MAX_NAME],
        "url": public,
        "hook_attributes": {"url": f"{public}/webhooks/github", "active": True},
        "redirect_url": f"{public}/github/callback",
        "callback_urls": [f"{public}/auth/github/callback"],  # Sign in with GitHub
        "setup_url": f"{public}/github/installed",
        "setup_on_update": False,
        "public": False,
        "default_permissions": dict(PERMISSIONS),
        "default_events": list(EVENTS),
    }


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise PermanentError(f"GitHub's answer to the manifest conversion has no {name}")
    return value


def exchange_code(
    api_url: str, code: str, *, transport: httpx.BaseTransport | None = None
) -> StoredApp:
    """Trade the manifest flow's ``code`` for the new App's identity and secrets."""
    url = f"{api_url.rstrip('/')}/app-manifests/{quote(code, safe='')}/conversions"
    try:
        with httpx.Client(timeout=EXCHANGE_TIMEOUT, trust_env=False, transport=transport) as client:
            response = client.post(
                url,
                headers={
                    "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": "2022-11-28",
                },
            )
    except httpx.HTTPError as exc:
        raise TemporaryError(
            f"could not reach GitHub to finish the App set-up ({type(exc).__name__})"
        ) from exc
    if response.status_code >= 500:
        raise TemporaryError(f"GitHub answered {response.status_code} to the manifest conversion")
    if response.status_code != 201:
        raise PermanentError(
            f"GitHub refused the manifest conversion ({response.status_code})",
            hint="the code is valid for one hour and once: run `slipway github setup` again",
        )
    try:
        body = response.json()
    except ValueError as exc:
        raise PermanentError("GitHub's answer to the manifest conversion is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("id"), int):
        raise PermanentError("GitHub's answer to the manifest conversion has no App id")
    return StoredApp(
        app_id=body["id"],
        slug=_text(body, "slug"),
        private_key=_text(body, "pem"),
        webhook_secret=_text(body, "webhook_secret"),
        client_id=_text(body, "client_id"),
        client_secret=_text(body, "client_secret"),
        html_url=_text(body, "html_url"),
    )
