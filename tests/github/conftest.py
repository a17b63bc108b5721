"""Fixtures: the fake GitHub (validating every request against GitHub's spec) and a
private git host that accepts only the tokens the fake issued."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fake_github import SPEC_PATH, FakeGitHub
from support.git_http import GitHttpServer
from support.repos import TaskRepo, git

INSTALLATION_ID = 5151
REPO = "octo-org/private-tasks"


@pytest.fixture(autouse=True)
def _hermetic_git(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    empty = tmp_path_factory.mktemp("gitconfig") / "config"
    empty.touch()
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG_COUNT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    if not SPEC_PATH.exists():
        pytest.fail(f"{SPEC_PATH} missing: run `npm ci` in tests/node")
    with FakeGitHub() as fake:
        fake.add_installation(INSTALLATION_ID, account="octo-org", repos=[REPO])
        yield fake
        assert fake.errors == [], "requests GitHub's spec does not allow:\n" + "\n".join(
            fake.errors
        )


@pytest.fixture
def private_repo(tmp_path: Path) -> TaskRepo:
    return TaskRepo(tmp_path / "work")


@pytest.fixture
def git_host(
    tmp_path: Path, fake_github: FakeGitHub, private_repo: TaskRepo
) -> Iterator[GitHttpServer]:
    root = tmp_path / "host"
    bare = root / f"{REPO}.git"
    bare.parent.mkdir(parents=True)
    git(private_repo.path, "clone", "-q", "--bare", str(private_repo.path), str(bare))
    with GitHttpServer(root, accept=lambda: fake_github.issued_tokens) as server:
        yield server
