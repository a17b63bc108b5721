"""The App of the moment: clone auth and the reporter use the App the manifest flow stored
when the settings name none (before, Services built clone auth from the settings only, so
a private repository of a manifest-flow App was fetched without a token)."""

from __future__ import annotations

from cryptography.fernet import Fernet
from support.fake_github import FakeGitHub

from controller.github.app import StoredApp
from controller.github.auth import github_clone_auth
from controller.github.client import AppClient
from controller.github.provider import RELOAD_SECONDS, AppClients
from controller.github.storage import store_app
from controller.secretstore.crypto import Cipher
from controller.settings import load_settings
from controller.store.db import Database

INSTALLATION_ID = 5151


def test_clone_auth_uses_the_stored_app_once_it_appears(
    sqlite_database: Database, fake_github: FakeGitHub
) -> None:
    cipher = Cipher([Fernet.generate_key().decode()])
    settings = load_settings(github_api_url=fake_github.url)
    assert settings.github.github_app_id is None
    now = [0.0]
    clients = AppClients(settings, db=sqlite_database, cipher=cipher, clock=lambda: now[0])
    auth = github_clone_auth(settings, clients=clients)
    assert auth is not None
    url = "https://git.example/octo-org/private-tasks.git"
    assert auth.header_for(clone_url=url, installation_id=INSTALLATION_ID) is None  # no App yet

    with sqlite_database.transaction() as session:
        store_app(
            session,
            cipher,
            StoredApp(
                app_id=fake_github.app_id,
                slug=fake_github.slug,
                private_key=fake_github.private_key,
                webhook_secret="whsec",
                client_id="Iv1.x",
                client_secret="client-secret",
                html_url="https://github.com/apps/slipway-test",
            ),
        )
    now[0] += RELOAD_SECONDS + 1
    header = auth.header_for(clone_url=url, installation_id=INSTALLATION_ID)
    (token,) = fake_github.issued_tokens
    assert header is not None and header.startswith("Authorization: basic ")
    client = clients.current()
    assert isinstance(client, AppClient) and client.app_id == fake_github.app_id
    assert "client-secret" not in repr(client) and token not in repr(client)
