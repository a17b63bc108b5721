"""Fixtures for the store tests: a cipher and a connected project with its environments.

Every test that touches the database takes the ``database`` fixture (from the top-level
``conftest.py``), so it runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from controller.domain.projects import create_project
from controller.secretstore.crypto import Cipher
from controller.store.db import Database


@pytest.fixture
def cipher() -> Cipher:
    return Cipher([Fernet.generate_key().decode()])


@pytest.fixture
def project_id(database: Database, cipher: Cipher) -> int:
    """Project ``demo`` on ``octo-org/demo``; production follows the repo's default branch."""
    with database.transaction() as session:
        return create_project(session, cipher, ref="demo", repo="octo-org/demo").id
