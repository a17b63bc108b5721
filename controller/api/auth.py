"""Bearer-token auth for the management API (the admin token, compared in constant time)."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token.strip()


def require_admin(request: Request) -> None:
    token = bearer(request)
    expected: str = request.app.state.services.settings.admin_token
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid bearer token (the admin token is in the data dir)",
            headers={"WWW-Authenticate": "Bearer"},
        )
