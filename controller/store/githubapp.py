"""Queries on the stored GitHub App and the sign-in sessions of its users. Rows hold
ciphertext: decrypting is the caller's (``controller.github.storage``,
``controller.web.signin_records``), which holds the cipher and the associated data."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.store.tables import GitHubApp, GitHubUserSession


def newest_github_app(session: Session) -> GitHubApp | None:
    return session.execute(select(GitHubApp).order_by(GitHubApp.id.desc()).limit(1)).scalar()


def live_user_session(session: Session, id_hash: str, *, now: datetime) -> GitHubUserSession | None:
    """The sign-in session of ``id_hash`` if it has not expired by ``now``."""
    return session.execute(
        select(GitHubUserSession).where(
            GitHubUserSession.id_hash == id_hash, GitHubUserSession.expires_at > now
        )
    ).scalar_one_or_none()
