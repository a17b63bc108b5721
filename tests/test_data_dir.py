"""What ``slipway serve`` creates on first start is for the server's user only: the data
dir, the generated token and key, the database and the webhook inbox (payloads)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from controller.settings import load_settings, prepare
from controller.store.db import Database
from controller.store.inbox import Inbox


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SLIPWAY_")]:
        monkeypatch.delenv(name)


def test_first_start_creates_a_private_data_dir_with_generated_secrets(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"

    settings, notices = prepare(load_settings(data_dir=data))

    assert settings.data_dir == data
    assert mode(data) == 0o700
    assert mode(data / "admin_token") == 0o600
    assert mode(data / "encryption.key") == 0o600
    key = (data / "encryption.key").read_text().strip()
    assert any("encryption.key" in notice for notice in notices)
    assert not any(key in notice for notice in notices), "the key itself is never printed"


def test_an_existing_data_dir_keeps_its_permissions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o750)
    data.chmod(0o750)

    prepare(load_settings(data_dir=data))

    assert mode(data) == 0o750


def test_the_sqlite_database_and_its_inbox_are_created_private(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'slipway.db'}")
    db.migrate()
    inbox = Inbox.beside(db.url)
    assert inbox is not None
    try:
        files = ["slipway.db", "slipway.db-wal", "slipway.inbox.db", "slipway.inbox.db-wal"]
        for name in files:
            assert mode(tmp_path / name) == 0o600, name
    finally:
        inbox.close()
        db.dispose()
