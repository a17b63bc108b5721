"""Fixtures for the reconcile passes: a cipher, projects, and a fake :class:`Source`.

The fake sits at our own adapter boundary (``controller.sources.base.Source``): it answers
from a dict, raises, or hangs until released, and records what it was asked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet

from controller.domain.projects import create_project
from controller.reconcile.branches import BranchPass, Repo
from controller.secretstore.crypto import Cipher
from controller.sources.base import Resolved, Source
from controller.store.db import Database

SHA_A = "a" * 40
SHA_B = "b" * 40


class FakeSource:
    """``heads`` maps a ref (``HEAD`` or ``refs/heads/…``) to a :class:`Resolved`, or to
    an exception to raise. ``hang`` makes every call wait until it is set."""

    def __init__(self, name: str = "octo-org/demo") -> None:
        self.name = name
        self.heads: dict[str, Resolved | BaseException] = {}
        self.asked: list[str] = []
        self.hang: threading.Event | None = None

    def resolve(self, ref: str) -> Resolved | None:
        self.asked.append(ref)
        if self.hang is not None:
            self.hang.wait(60)
        answer = self.heads.get(ref)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def point(self, branch: str, sha: str, *, default: bool = False) -> None:
        head = Resolved(ref=f"refs/heads/{branch}", sha=sha)
        self.heads[head.ref] = head
        if default:
            self.heads["HEAD"] = head


class Sources:
    """The pass's source factory: one fake per project ref; records what it was asked."""

    def __init__(self) -> None:
        self.by_ref: dict[str, FakeSource] = {}
        self.asked_for: list[str] = []

    def __call__(self, repo: Repo) -> Source | None:
        self.asked_for.append(repo.ref)
        return self.by_ref.setdefault(repo.ref, FakeSource(repo.repo))

    def __getitem__(self, ref: str) -> FakeSource:
        return self.by_ref.setdefault(ref, FakeSource())


@pytest.fixture
def cipher() -> Cipher:
    return Cipher([Fernet.generate_key().decode()])


@pytest.fixture
def make_project(database: Database, cipher: Cipher) -> Callable[..., int]:
    def make(ref: str = "demo", **fields: Any) -> int:
        fields.setdefault("repo", "octo-org/demo")
        fields.setdefault("clone_url", "/srv/git/demo.git")
        with database.transaction() as session:
            return create_project(session, cipher, ref=ref, **fields).id

    return make


@pytest.fixture
def sources() -> Sources:
    return Sources()


@pytest.fixture
def branch_pass(database: Database, cipher: Cipher, sources: Sources) -> Iterator[BranchPass]:
    yield BranchPass(db=database, cipher=cipher, source_for=sources, timeout=5.0)
