"""The start-up check of the App's identity: one call (``GET /app``) with a clear message.

A wrong App id, an unreadable key or a key of another App fail ``slipway serve`` at
once with what to fix, instead of every deployment failing later. GitHub being
unreachable only warns: deployments retry on their own.
"""

from __future__ import annotations

from controller.errors import PermanentError, TemporaryError
from controller.github.app import StoredApp
from controller.github.client import AppClient, make_client
from controller.github.errors import GitHubRejected
from controller.settings import Settings


def check_app(settings: Settings, *, stored_app: StoredApp | None = None) -> str | None:
    """A notice naming the App, ``None`` without one; raises :class:`PermanentError`.

    A :class:`TemporaryError` (GitHub unreachable, rate limited) is returned as a warning
    notice, not raised."""
    client = make_client(settings, stored_app=stored_app)
    if client is None:
        return None
    app_id = client.app_id if isinstance(client, AppClient) else None
    try:
        info = client.app_info()
    except TemporaryError as exc:
        return f"warning: could not check the GitHub App yet: {exc.message}"
    except GitHubRejected as exc:
        if exc.status == 401:
            raise PermanentError(
                f"GitHub rejected the App's token: the private key does not belong to App "
                f"{app_id}, or the App id is wrong ({exc.message})",
                hint="check SLIPWAY_GITHUB_APP_ID and SLIPWAY_GITHUB_PRIVATE_KEY(_PATH) belong "
                "to the same App",
            ) from None
        if exc.status == 404:
            raise PermanentError(
                f"GitHub knows no App with id {app_id} ({exc.message})",
                hint="set SLIPWAY_GITHUB_APP_ID to the App ID from the App's settings page",
            ) from None
        raise
    if app_id is not None and info.get("id") not in (None, app_id):
        raise PermanentError(
            f"the private key signs for App {info.get('id')}, not App {app_id}",
            hint="SLIPWAY_GITHUB_APP_ID and the private key must belong to the same App",
        )
    return f"GitHub App {info.get('slug') or info.get('name')} (id {info.get('id')})"
