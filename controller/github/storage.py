"""The manifest-flow App and its one-time tokens in the database.

**The App** (:class:`StoredApp`) is one row of ``github_apps``; a new set-up replaces it.
Its private key, webhook secret and client secret are encrypted with the env var store's
:class:`Cipher` (AES-GCM), each bound by associated data to ``github-app/<id>/<field>``,
so a ciphertext copied into another column does not decrypt there. The database, the
data dir's files and API answers never hold them in the clear.

**One-time tokens** (the set-up page's ``token`` and the manifest's ``state``) are random
(256 bits), stored only as their SHA-256 (they are random, so no salt is needed), expire
after :data:`TOKEN_TTL` and are consumed by a conditional ``UPDATE … WHERE used_at IS
NULL``: of two requests racing with the same token, exactly one wins, on SQLite and on
PostgreSQL alike.

**The webhook secret on the hot path** (:class:`AppSecretCache`): the receiver asks for
the secret on every delivery, so the stored App's secret is kept in memory. It is loaded
on first use and again at most every :data:`RELOAD_SECONDS` (so another replica's
set-up is picked up), and at once when the callback of this process stores a new App. A
delivery therefore costs no query and no decryption, except the one in a few minutes
that finds the cache stale (one indexed read; decryption is memoised by the cipher).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from controller.github.app import StoredApp
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.githubapp import newest_github_app
from controller.store.tables import GitHubApp, GitHubSetupToken, utcnow

log = logging.getLogger(__name__)

TOKEN_TTL = timedelta(minutes=10)
RELOAD_SECONDS = 300.0
RETRY_SECONDS = 5.0
_SECRET_FIELDS = ("private_key", "webhook_secret", "client_secret")


def _aad(app_id: int, name: str) -> bytes:
    return f"github-app\0{app_id}\0{name}".encode()


def store_app(session: Session, cipher: Cipher, app: StoredApp) -> None:
    """Replace the stored App with ``app`` (its secrets encrypted)."""
    session.execute(delete(GitHubApp))
    session.add(
        GitHubApp(
            app_id=app.app_id,
            slug=app.slug,
            html_url=app.html_url,
            client_id=app.client_id,
            **{
                f"{name}_encrypted": cipher.encrypt(getattr(app, name), aad=_aad(app.app_id, name))
                for name in _SECRET_FIELDS
            },
        )
    )


def load_app(session: Session, cipher: Cipher) -> StoredApp | None:
    row = newest_github_app(session)
    if row is None:
        return None
    plain = {
        name: cipher.decrypt(getattr(row, f"{name}_encrypted"), aad=_aad(row.app_id, name))
        for name in _SECRET_FIELDS
    }
    return StoredApp(
        app_id=row.app_id,
        slug=row.slug,
        client_id=row.client_id,
        html_url=row.html_url,
        **plain,
    )


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, *, kind: str, org: str | None = None) -> str:
    """A new one-time token of ``kind`` (``setup`` or ``state``); only its hash is kept."""
    now = utcnow()
    session.execute(delete(GitHubSetupToken).where(GitHubSetupToken.expires_at < now))
    token = secrets.token_urlsafe(32)
    session.add(
        GitHubSetupToken(token_hash=_hash(token), kind=kind, org=org, expires_at=now + TOKEN_TTL)
    )
    return token


def consume_token(session: Session, token: str, *, kind: str) -> GitHubSetupToken | None:
    """The token's row if it was issued for ``kind``, is unexpired and unused; it is used
    from now on. ``None`` otherwise (the caller says why in general terms only)."""
    now = utcnow()
    won = session.execute(
        update(GitHubSetupToken)
        .where(
            GitHubSetupToken.token_hash == _hash(token),
            GitHubSetupToken.kind == kind,
            GitHubSetupToken.used_at.is_(None),
            GitHubSetupToken.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(won, "rowcount", 0) != 1:
        return None
    return session.get(GitHubSetupToken, _hash(token))


class AppSecretCache:
    """The stored App's webhook secret, in memory (see the module docstring)."""

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        cipher: Callable[[], Cipher],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._cipher = cipher
        self._clock = clock
        self._lock = threading.Lock()
        self._secret: str | None = None
        self._loaded_at: float | None = None

    def webhook_secret(self) -> str | None:
        loaded = self._loaded_at
        if loaded is None or self._clock() - loaded > RELOAD_SECONDS:
            self.reload()
        return self._secret

    def reload(self) -> None:
        with self._lock:
            try:
                with self._db().read() as session:
                    app = load_app(session, self._cipher())
            except Exception as exc:  # keep what we had; try again in a few seconds
                log.warning("could not load the stored GitHub App: %s", type(exc).__name__)
                self._loaded_at = self._clock() - RELOAD_SECONDS + RETRY_SECONDS
                return
            self._secret = app.webhook_secret if app is not None else None
            self._loaded_at = self._clock()

    def set(self, app: StoredApp) -> None:
        with self._lock:
            self._secret = app.webhook_secret
            self._loaded_at = self._clock()
