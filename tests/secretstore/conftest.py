"""Fixtures for the secret store: ciphers with known keys, a project with environments."""

from __future__ import annotations

import base64

import pytest

from controller.domain.environments import ensure_environment
from controller.domain.projects import create_project
from controller.secretstore.crypto import Cipher
from controller.store.db import Database

K1 = base64.urlsafe_b64encode(b"k1" * 16).decode()  # the same key as the tests' K1


@pytest.fixture
def cipher() -> Cipher:
    return Cipher([K1])


@pytest.fixture
def project_id(database: Database, cipher: Cipher) -> int:
    """Project ``demo`` with a preview branch ``feature`` and a fork preview ``fork-pr``."""
    with database.transaction() as session:
        project = create_project(session, cipher, ref="demo", repo="octo-org/demo")
        ensure_environment(session, cipher, project=project, name="preview", branch="feature")
        ensure_environment(
            session, cipher, project=project, name="preview", branch="fork-pr", is_fork=True
        )
        return project.id
