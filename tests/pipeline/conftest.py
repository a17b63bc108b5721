"""Fixtures for the pipeline tests: a queued deployment in a real database (SQLite and
PostgreSQL, through the top-level ``database`` fixture) and a count of its write transactions."""

from __future__ import annotations

from contextlib import AbstractContextManager

import pytest
from cryptography.fernet import Fernet
from sqlalchemy.orm import Session

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import find_environment
from controller.domain.projects import create_project, get_project
from controller.secretstore.crypto import Cipher
from controller.store.db import Database


@pytest.fixture
def deployment_id(database: Database) -> str:
    cipher = Cipher([Fernet.generate_key().decode()])
    with database.transaction() as session:
        create_project(session, cipher, ref="demo", repo="octo-org/demo")
    with database.transaction() as session:
        project = get_project(session, "demo")
        env = find_environment(session, project, "production", None)
        return request_deployment(
            session,
            project=project,
            environment=env,
            request=DeployRequest(sha="a" * 40, ref="refs/heads/main", source="push"),
        ).id


class Writes:
    """Counts the write transactions a database opens (``Database.transaction``)."""

    def __init__(self, database: Database) -> None:
        self.count = 0
        self._transaction = database.transaction

    def transaction(self) -> AbstractContextManager[Session]:
        self.count += 1
        return self._transaction()


@pytest.fixture
def writes(database: Database, monkeypatch: pytest.MonkeyPatch) -> Writes:
    counter = Writes(database)
    monkeypatch.setattr(database, "transaction", counter.transaction)
    return counter
