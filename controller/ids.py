"""Public identifiers: a readable prefix and 12 random lowercase base32 characters."""

from __future__ import annotations

import base64
import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]}"
