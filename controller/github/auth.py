"""How an installation token reaches git: an ``Authorization`` header, never a URL.

GitHub accepts basic auth with user ``x-access-token`` and the installation token as
password. :func:`git_auth_header` builds that header; :class:`~controller.sources.git.GitSource`
passes it to the one git command as ``http.extraHeader`` through ``GIT_CONFIG_*``
environment variables, so it is in no remote URL, no git config file and no command line,
and git's stderr is scrubbed of it.

The header is only sent to the clone URL GitHub itself reported for the repository (see
:meth:`InstallationAuth.header_for`): a clone URL a user typed may point anywhere, and an
installation token must not travel there.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import urlsplit

from controller.github.app import StoredApp
from controller.github.client import GitHubClient, make_client
from controller.github.provider import AppClients
from controller.settings import Settings


def git_auth_header(token: str) -> str:
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return f"Authorization: basic {basic}"


class InstallationAuth:
    """Headers for GitHub-reported clone URLs, from a :class:`GitHubClient`'s tokens, or
    from whichever App :class:`AppClients` has at the time (the manifest flow may store
    one while Slipway runs)."""

    def __init__(self, client: GitHubClient | AppClients) -> None:
        self._current: Callable[[], GitHubClient | None] = (
            client.current if isinstance(client, AppClients) else lambda: client
        )

    def header_for(self, *, clone_url: str, installation_id: int | None) -> str | None:
        """``None`` when there is nothing to authenticate with or the URL is not https/http."""
        if installation_id is None or urlsplit(clone_url).scheme not in ("https", "http"):
            return None
        client = self._current()
        if client is None:
            return None
        return git_auth_header(client.installation_token(installation_id))


def github_clone_auth(
    settings: Settings,
    *,
    stored_app: StoredApp | None = None,
    clients: AppClients | None = None,
) -> InstallationAuth | None:
    """Clone credentials from ``clients`` (settings, else the stored App, looked up when
    needed), else from the configured or given App; ``None`` without one."""
    if clients is not None:
        return InstallationAuth(clients)
    client = make_client(settings, stored_app=stored_app)
    return InstallationAuth(client) if client is not None else None
