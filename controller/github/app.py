"""The App's identity as the manifest flow stores it, and GitHub's URLs derived from the API's.

:class:`StoredApp` is what ``GET /github/callback`` receives from GitHub's manifest
conversion; it is stored encrypted elsewhere (the manifest flow) and only carried here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

PUBLIC_API_URL = "https://api.github.com"


@dataclass(frozen=True)
class StoredApp:
    """A GitHub App created by the manifest flow. Secrets stay out of ``repr``."""

    app_id: int
    slug: str
    private_key: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    client_id: str
    client_secret: str = field(repr=False)
    html_url: str


def web_url(api_url: str) -> str:
    """GitHub's web URL for an API URL: ``https://api.github.com`` → ``https://github.com``,
    ``https://HOST/api/v3`` (Enterprise Server) → ``https://HOST``; any other URL (a test
    server) is its own web URL."""
    url = api_url.rstrip("/")
    parts = urlsplit(url)
    if parts.hostname == "api.github.com":
        return "https://github.com"
    if parts.path.endswith("/api/v3"):
        return urlunsplit((parts.scheme, parts.netloc, parts.path[: -len("/api/v3")], "", ""))
    return url
