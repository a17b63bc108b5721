"""The App client of the moment: the configured App, else the one the manifest flow stored.

Settings win and never change while Slipway runs, so their client is built once. The
stored App can appear (or be replaced) at any time through ``GET /github/callback``, so
without settings the stored row is re-read at most every :data:`RELOAD_SECONDS` and a
new client is built only when the App changed. A database hiccup keeps the client we had.

Clone auth and the reporter both ask :meth:`AppClients.current`; ``None`` means no App is
configured, and nothing is sent to GitHub.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from controller.github.client import GitHubClient, make_client
from controller.github.storage import load_app
from controller.secretstore.crypto import Cipher
from controller.settings import Settings
from controller.store.db import Database

log = logging.getLogger(__name__)

RELOAD_SECONDS = 30.0


class AppClients:
    def __init__(
        self,
        settings: Settings,
        *,
        db: Database | None = None,
        cipher: Cipher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._db = db
        self._cipher = cipher
        self._clock = clock
        self._lock = threading.Lock()
        self._configured = make_client(settings)
        self._stored: GitHubClient | None = None
        self._stored_id: int | None = None
        self._loaded_at: float | None = None

    def current(self) -> GitHubClient | None:
        if self._configured is not None or self._db is None or self._cipher is None:
            return self._configured
        with self._lock:
            now = self._clock()
            if self._loaded_at is None or now - self._loaded_at > RELOAD_SECONDS:
                self._loaded_at = now
                self._reload()
            return self._stored

    def _reload(self) -> None:
        assert self._db is not None and self._cipher is not None
        try:
            with self._db.read() as session:
                app = load_app(session, self._cipher)
            if app is None:
                self._stored, self._stored_id = None, None
            elif app.app_id != self._stored_id:
                self._stored = make_client(self._settings, stored_app=app)
                self._stored_id = app.app_id
        except Exception as exc:
            log.warning("could not load the stored GitHub App: %s", type(exc).__name__)
