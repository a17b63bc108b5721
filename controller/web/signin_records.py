"""The server-side record of a person signed in with GitHub: login and user token.

The user token must be kept: who may see and promote which project is asked of GitHub
with it (through :class:`controller.github.oauth.PushAccess`, a minute at a time), so
losing push access on GitHub takes effect within a minute, not at the end of a session.
It is kept here, not in the cookie: one row of ``github_user_sessions`` per session,
keyed by the SHA-256 of the session id the signed cookie carries (so the table alone
does not let anyone make a cookie), the token encrypted with the env var store's
:class:`Cipher` and bound by associated data to that key (a ciphertext copied to another
row does not decrypt). Signing out deletes the row; an expired row, or one that no
longer decrypts (its encryption key was retired after ``keys rotate``, which leaves these
rows alone: they live hours, not years), reads as no session; expired rows are deleted
when the next person signs in.

Sign in with GitHub is offered when the App the manifest flow stored has an OAuth client
(:func:`oauth_app`); an App configured by ``SLIPWAY_GITHUB_APP_ID`` alone has none here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session
from starlette.requests import Request

from controller.errors import PermanentError
from controller.github.app import StoredApp
from controller.github.storage import load_app
from controller.secretstore.crypto import Cipher
from controller.store.githubapp import live_user_session
from controller.store.tables import GitHubUserSession, utcnow


@dataclass(frozen=True)
class SignedIn:
    login: str
    token: str = field(repr=False)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _aad(id_hash: str) -> bytes:
    return f"github-user-session\0{id_hash}".encode()


def store_signin(
    session: Session,
    cipher: Cipher,
    *,
    session_id: str,
    login: str,
    github_user_id: int,
    token: str,
    lifetime: int,
) -> None:
    now = utcnow()
    session.execute(delete(GitHubUserSession).where(GitHubUserSession.expires_at < now))
    id_hash = _hash(session_id)
    session.add(
        GitHubUserSession(
            id_hash=id_hash,
            login=login,
            github_user_id=github_user_id,
            token_encrypted=cipher.encrypt(token, aad=_aad(id_hash)),
            expires_at=now + timedelta(seconds=lifetime),
        )
    )


def load_signin(session: Session, cipher: Cipher, session_id: str) -> SignedIn | None:
    id_hash = _hash(session_id)
    row = live_user_session(session, id_hash, now=utcnow())
    if row is None:
        return None
    try:
        token = cipher.decrypt(row.token_encrypted, aad=_aad(id_hash))
    except PermanentError:  # its key was retired, or the row was tampered with
        return None
    return SignedIn(login=row.login, token=token)


def delete_signin(session: Session, session_id: str) -> None:
    session.execute(delete(GitHubUserSession).where(GitHubUserSession.id_hash == _hash(session_id)))


def oauth_app(request: Request) -> StoredApp | None:
    """The stored GitHub App when it has an OAuth client (the manifest flow gives one)."""
    services = request.app.state.services
    with services.db.read() as session:
        app = load_app(session, services.cipher)
    return app if app is not None and app.client_id and app.client_secret else None
