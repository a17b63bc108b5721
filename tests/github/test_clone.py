"""Private clones: the installation token reaches git as a header, and nowhere else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support.fake_github import FakeGitHub
from support.git_http import GitHttpServer
from support.repos import TaskRepo

from controller.errors import SourceNotFound
from controller.github.auth import InstallationAuth, git_auth_header
from controller.github.client import AppClient
from controller.sources.git import GitSource

INSTALLATION_ID = 5151
REPO = "octo-org/private-tasks"


def grep_tree(root: Path, needle: str) -> list[Path]:
    return [
        path for path in root.rglob("*") if path.is_file() and needle.encode() in path.read_bytes()
    ]


def test_a_private_repository_is_fetched_with_an_installation_token(
    tmp_path: Path, fake_github: FakeGitHub, git_host: GitHttpServer, private_repo: TaskRepo
) -> None:
    client = AppClient(
        app_id=fake_github.app_id, private_key=fake_github.private_key, api_url=fake_github.url
    )
    auth = InstallationAuth(client)
    clone_url = git_host.clone_url(REPO)
    header = auth.header_for(clone_url=clone_url, installation_id=INSTALLATION_ID)
    assert header is not None
    cache = tmp_path / "git"
    source = GitSource(cache)
    sha = private_repo.head()
    source.fetch(clone_url=clone_url, sha=sha, refs=["refs/heads/main"], auth_header=header)
    source.export(clone_url=clone_url, sha=sha, dest=tmp_path / "tree")
    assert (tmp_path / "tree/tasks/hello.py").is_file()
    accepted = [seen for seen in git_host.seen if seen.accepted]
    assert accepted and all(seen.user == "x-access-token" for seen in accepted)
    (token,) = fake_github.issued_tokens
    assert grep_tree(cache, token) == []
    assert grep_tree(cache, header.split()[-1]) == []
    config = subprocess.run(
        ["git", "--git-dir", str(next(cache.glob("*.git"))), "config", "--list", "--local"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert token not in config and "extraheader" not in config.lower()


def test_without_a_token_or_with_a_wrong_one_the_host_refuses(
    tmp_path: Path, fake_github: FakeGitHub, git_host: GitHttpServer, private_repo: TaskRepo
) -> None:
    source = GitSource(tmp_path / "git", timeout=60)
    clone_url = git_host.clone_url(REPO)
    with pytest.raises(SourceNotFound):
        source.fetch(clone_url=clone_url, sha=private_repo.head())
    wrong = "ghs_" + "0" * 36
    with pytest.raises(SourceNotFound) as caught:
        source.fetch(
            clone_url=clone_url, sha=private_repo.head(), auth_header=git_auth_header(wrong)
        )
    message = f"{caught.value} {caught.value.__cause__}"
    assert wrong not in message and git_auth_header(wrong).split()[-1] not in message
    assert git_host.seen and not any(seen.accepted for seen in git_host.seen)


def test_no_header_for_urls_git_cannot_send_it_to(fake_github: FakeGitHub) -> None:
    client = AppClient(
        app_id=fake_github.app_id, private_key=fake_github.private_key, api_url=fake_github.url
    )
    auth = InstallationAuth(client)
    assert auth.header_for(clone_url="git@github.com:o/r.git", installation_id=1) is None
    assert auth.header_for(clone_url="https://github.com/o/r.git", installation_id=None) is None
    assert fake_github.requests == []
