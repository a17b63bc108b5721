"""The manifest-flow App at rest, its one-time tokens, and the webhook secret cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from controller.errors import PermanentError
from controller.github.app import StoredApp
from controller.github.storage import (
    RELOAD_SECONDS,
    AppSecretCache,
    consume_token,
    issue_token,
    load_app,
    store_app,
)
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.tables import GitHubApp, GitHubSetupToken, utcnow

APP = StoredApp(
    app_id=77,
    slug="slipway-test",
    private_key="-----BEGIN RSA PRIVATE KEY-----\nsecret-key-body\n-----END RSA PRIVATE KEY-----\n",
    webhook_secret="whsec-value",
    client_id="Iv1.abc",
    client_secret="client-secret-value",
    html_url="https://github.com/apps/slipway-test",
)


def test_the_app_is_stored_encrypted_and_loads_back(database: Database, cipher: Cipher) -> None:
    with database.transaction() as session:
        store_app(session, cipher, APP)
    with database.read() as session:
        row = session.execute(select(GitHubApp)).scalar_one()
        stored = " ".join(str(v) for v in vars(row).values())
        assert load_app(session, cipher) == APP
    for secret in (APP.private_key, "secret-key-body", APP.webhook_secret, APP.client_secret):
        assert secret not in stored


def test_a_ciphertext_moved_to_another_field_does_not_decrypt(
    database: Database, cipher: Cipher
) -> None:
    with database.transaction() as session:
        store_app(session, cipher, APP)
        row = session.execute(select(GitHubApp)).scalar_one()
        row.webhook_secret_encrypted = row.client_secret_encrypted
    with database.read() as session, pytest.raises(PermanentError, match="cannot be decrypted"):
        load_app(session, cipher)


def test_a_new_app_replaces_the_old_one(database: Database, cipher: Cipher) -> None:
    newer = StoredApp(**{**vars(APP), "app_id": 78, "webhook_secret": "newer"})
    with database.transaction() as session:
        store_app(session, cipher, APP)
    with database.transaction() as session:
        store_app(session, cipher, newer)
    with database.read() as session:
        assert session.execute(select(GitHubApp.app_id)).scalars().all() == [78]


def test_a_token_is_hashed_single_use_and_of_one_kind(database: Database) -> None:
    with database.transaction() as session:
        token = issue_token(session, kind="setup", org="octo-org")
    with database.read() as session:
        assert token not in " ".join(
            session.execute(select(GitHubSetupToken.token_hash)).scalars().all()
        )
    with database.transaction() as session:
        assert consume_token(session, token, kind="state") is None
        row = consume_token(session, token, kind="setup")
        assert row is not None and row.org == "octo-org"
    with database.transaction() as session:
        assert consume_token(session, token, kind="setup") is None
        assert consume_token(session, "never-issued", kind="setup") is None


def test_an_expired_token_is_refused(database: Database) -> None:
    with database.transaction() as session:
        token = issue_token(session, kind="state")
    with database.transaction() as session:
        session.execute(update(GitHubSetupToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    with database.transaction() as session:
        assert consume_token(session, token, kind="state") is None


def test_of_two_racing_requests_one_wins(database: Database) -> None:
    with database.transaction() as session:
        token = issue_token(session, kind="state")
    won: list[bool] = []
    barrier = threading.Barrier(2)

    def attempt() -> None:
        barrier.wait(30)
        with database.transaction() as session:
            won.append(consume_token(session, token, kind="state") is not None)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(won) == [False, True]


class CountingDatabase:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.reads = 0

    @contextmanager
    def read(self) -> Iterator[Any]:
        self.reads += 1
        with self.database.read() as session:
            yield session


def test_the_secret_cache_reads_once_then_on_set_or_when_stale(
    database: Database, cipher: Cipher
) -> None:
    now = [1000.0]
    counting = CountingDatabase(database)
    cache = AppSecretCache(db=lambda: counting, cipher=lambda: cipher, clock=lambda: now[0])  # type: ignore[arg-type, return-value]
    assert cache.webhook_secret() is None
    with database.transaction() as session:
        store_app(session, cipher, APP)
    for _ in range(100):
        cache.webhook_secret()
    assert counting.reads == 1

    cache.set(APP)  # the callback of this process stored it
    assert cache.webhook_secret() == APP.webhook_secret
    assert counting.reads == 1

    now[0] += RELOAD_SECONDS + 1  # another replica's set-up is seen in time
    assert cache.webhook_secret() == APP.webhook_secret
    assert counting.reads == 2
