"""The GitHub App's identity as Slipway stores it (the manifest flow creates one)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StoredApp:
    app_id: int
    slug: str
    private_key: str
    webhook_secret: str
    client_id: str
    client_secret: str
    html_url: str
