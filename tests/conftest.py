"""Fixtures shared by every test folder.

``database`` runs a test on SQLite and on PostgreSQL. PostgreSQL comes from
``SLIPWAY_TEST_DATABASE_URL`` (``.ci/run`` installs and starts it); without it the
PostgreSQL half is skipped with a reason — except under ``CI=true``, where a missing
database is an error, so CI never passes by skipping.

Tests wait with ``support.waiting`` (deadlines scaled by ``SLIPWAY_TEST_TIMEOUT_SCALE``);
the per-test timeout from ``pyproject.toml`` is scaled with them here, so a scale above 1
never makes a wait outlast its test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support.repos import TaskRepo
from support.server import Server
from support.waiting import SCALE

from controller.settings import normalise_database_url
from controller.store.db import Database

PG_URL = os.environ.get("SLIPWAY_TEST_DATABASE_URL")
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    base = config.getini("timeout")
    if SCALE == 1 or not base:
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(float(base) * SCALE))


def _postgres_database() -> Iterator[str]:
    if not PG_URL:
        if IN_CI:
            raise RuntimeError(
                "CI=true but SLIPWAY_TEST_DATABASE_URL is not set: .ci/run must start PostgreSQL"
            )
        pytest.skip("PostgreSQL not configured: set SLIPWAY_TEST_DATABASE_URL (bash .ci/run does)")
    admin_url = normalise_database_url(PG_URL)
    name = f"slipway_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'slipway.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


def _migrated(url: str) -> Iterator[Database]:
    db = Database(url)
    db.migrate()
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    yield from _migrated(database_url)


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    """SQLite only, for what only SQLite has (the webhook inbox)."""
    yield from _migrated(f"sqlite:///{tmp_path / 'slipway.db'}")


@pytest.fixture
def task_repo(tmp_path: Path) -> TaskRepo:
    return TaskRepo(tmp_path / "repo")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    try:
        yield srv.start()
    finally:
        srv.close()
