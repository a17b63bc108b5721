"""GitSource.resolve: ``git ls-remote`` of a clone URL, as the resync's branch pass asks it."""

from __future__ import annotations

import base64
import subprocess
import time
import traceback
from pathlib import Path

import pytest

from controller.errors import SourceNotFound, SourceUnavailable
from controller.sources.base import GitRemote, Resolved
from controller.sources.git import GitSource

TOKEN = "ghs_s3cretResolveToken0123456789abcdef"
BASIC = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()


def bare_clone(upstream, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    remote = tmp_path / "remote.git"
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", str(upstream.path), str(remote)], check=True
    )
    return remote


def test_head_follows_the_default_branch_and_branches_resolve(upstream, source, tmp_path):
    upstream.git("branch", "staging")
    upstream.git("branch", "feature/main")  # ls-remote would match "main" on its tail
    staging = upstream.git("rev-parse", "staging")
    main = upstream.commit(message="on main")
    remote = bare_clone(upstream, tmp_path)

    assert source.resolve("HEAD", clone_url=str(remote)) == Resolved("refs/heads/main", main)
    assert source.resolve("refs/heads/main", clone_url=f"file://{remote}") == Resolved(
        "refs/heads/main", main
    )
    assert source.resolve("refs/heads/staging", clone_url=str(remote)) == Resolved(
        "refs/heads/staging", staging
    )
    assert source.resolve("refs/heads/nope", clone_url=str(remote)) is None
    assert list((tmp_path / "cache").glob("*.git")) == []  # no mirror is made for a resolve


def test_the_answer_follows_new_pushes(upstream, source, tmp_path):
    remote = bare_clone(upstream, tmp_path)
    new = upstream.commit(message="next")
    upstream.git("push", "--quiet", str(remote), "main")
    assert GitRemote(resolver=source, clone_url=str(remote), name="demo").resolve("HEAD") == (
        Resolved("refs/heads/main", new)
    )


def test_an_empty_repository_has_no_head(source, tmp_path):
    empty = tmp_path / "empty.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(empty)], check=True)
    assert source.resolve("HEAD", clone_url=str(empty)) is None


def test_a_missing_repository_is_source_not_found(source, tmp_path):
    with pytest.raises(SourceNotFound):
        source.resolve("HEAD", clone_url=str(tmp_path / "nowhere.git"))
    not_git = tmp_path / "plain"
    not_git.mkdir()
    with pytest.raises(SourceNotFound):
        source.resolve("HEAD", clone_url=str(not_git))


def test_an_invalid_ref_is_refused_before_git_runs(source, tmp_path):
    with pytest.raises(SourceNotFound):
        source.resolve("refs/heads/../x", clone_url=str(tmp_path))


@pytest.mark.parametrize(("status", "expected"), [(404, SourceNotFound), (503, SourceUnavailable)])
def test_http_errors_are_classified_and_no_credential_leaks(error_server, source, status, expected):
    error_server.status = status
    host = error_server.url.removeprefix("http://")
    url = f"http://x-access-token:{TOKEN}@{host}/octo-org/demo.git"

    with pytest.raises(expected) as caught:
        source.resolve("HEAD", clone_url=url, auth_header=f"AUTHORIZATION: basic {BASIC}")

    assert "octo-org/demo" in str(caught.value)
    everything = "".join(traceback.format_exception(caught.value))
    for secret in (TOKEN, BASIC, "s3cret"):
        assert secret not in everything


def test_a_hanging_server_times_out(error_server, tmp_path):
    error_server.status = None
    source = GitSource(tmp_path / "cache", timeout=60)
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="timed out after 1s"):
        source.resolve("HEAD", clone_url=f"{error_server.url}/octo-org/demo.git", timeout=1)
    assert time.monotonic() - started < 20
