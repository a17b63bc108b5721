"""GitSource against real repositories: local paths, file:// URLs and an HTTP server."""

from __future__ import annotations

import base64
import fcntl
import os
import socket
import stat
import subprocess
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.waiting import scaled

from controller.errors import PermanentError, SourceNotFound, SourceUnavailable
from controller.sources.archive import content_digest
from controller.sources.git import GitSource, list_tracked_files

TOKEN = "ghs_s3cretInstallationToken0123456789"
BASIC = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
AUTH_HEADER = f"AUTHORIZATION: basic {BASIC}"


def only_mirror(cache: Path) -> Path:
    mirrors = list(cache.glob("*.git"))
    assert len(mirrors) == 1, mirrors
    return mirrors[0]


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def assert_no_secret(text: str) -> None:
    for secret in (TOKEN, BASIC, "s3cret"):
        assert secret not in text


# --- fetch --------------------------------------------------------------------------


def test_fetch_by_sha_from_a_local_path(upstream, source):
    sha = upstream.git("rev-parse", "HEAD")

    source.fetch(clone_url=str(upstream.path), sha=sha)

    assert source.read_file(clone_url=str(upstream.path), sha=sha, path="README.md") == b"# demo\n"


def test_fetch_by_sha_from_a_file_url(upstream, source):
    url = upstream.path.as_uri()
    sha = upstream.git("rev-parse", "HEAD")

    source.fetch(clone_url=url, sha=sha)

    assert source.read_file(clone_url=url, sha=sha, path="README.md") == b"# demo\n"


def test_a_known_commit_is_not_fetched_from_the_remote_again(upstream, source, tmp_path):
    url = str(upstream.path)
    sha = upstream.git("rev-parse", "HEAD")
    source.fetch(clone_url=url, sha=sha)
    upstream.path.rename(tmp_path / "moved-away")  # any contact with the remote now fails

    source.fetch(clone_url=url, sha=sha)
    source.fetch(clone_url=url, sha=sha[:7].upper())

    assert source.export(clone_url=url, sha=sha, dest=tmp_path / "out").startswith("sha256:")
    with pytest.raises(SourceNotFound, match="path does not exist"):
        source.fetch(clone_url=url, sha="1234abc")


def test_a_new_commit_is_fetched_incrementally(upstream, source):
    url = str(upstream.path)
    first = upstream.commit({"data.bin": os.urandom(256 * 1024)})
    source.fetch(clone_url=url, sha=first)
    after_first = tree_size(source._cache_dir)
    second = upstream.commit({"README.md": "# demo, second edition\n"})

    source.fetch(clone_url=url, sha=second)

    assert after_first > 256 * 1024
    assert tree_size(source._cache_dir) - after_first < 32 * 1024  # not the big blob again
    assert source.read_file(clone_url=url, sha=second, path="README.md") == (
        b"# demo, second edition\n"
    )
    assert source.read_file(clone_url=url, sha=first, path="README.md") == b"# demo\n"


def test_a_short_sha_of_an_older_commit_is_found_through_the_branches(upstream, source):
    older = upstream.git("rev-parse", "HEAD")
    upstream.commit({"README.md": "newer\n"})

    source.fetch(clone_url=str(upstream.path), sha=older[:10])

    assert source.read_file(clone_url=str(upstream.path), sha=older, path="README.md") == (
        b"# demo\n"
    )


def test_refs_are_fetched_for_a_commit_on_no_branch(upstream, source):
    url = str(upstream.path)
    upstream.git("checkout", "--quiet", "-b", "contributor")
    pr_head = upstream.commit({"tasks/new.py": "def run(payload, ctx): ...\n"})
    upstream.git("update-ref", "refs/pull/7/head", pr_head)
    upstream.git("checkout", "--quiet", "main")
    upstream.git("branch", "--quiet", "-D", "contributor")

    with pytest.raises(SourceNotFound):
        source.fetch(clone_url=url, sha=pr_head[:12])
    source.fetch(clone_url=url, sha=pr_head[:12], refs=["refs/pull/7/head"])

    assert source.read_file(clone_url=url, sha=pr_head, path="tasks/new.py") is not None


@pytest.mark.parametrize("sha", ["1234abc" + "0" * 33, "1234abc"])
def test_an_unknown_commit_is_source_not_found_naming_the_short_sha(upstream, source, sha):
    with pytest.raises(SourceNotFound) as caught:
        source.fetch(clone_url=upstream.path.as_uri(), sha=sha)

    message = str(caught.value)
    assert "commit 1234abc not found in" in message
    assert "octo-org/demo" in message
    assert "force-pushed" in message
    assert sha not in message or len(sha) == 7


@pytest.mark.parametrize("sha", ["main", "12345", "g" * 40, "a" * 41, "", "HEAD~1"])
def test_an_invalid_sha_is_refused_before_anything_runs(upstream, source, tmp_path, sha):
    with pytest.raises(SourceNotFound, match="not a commit sha"):
        source.fetch(clone_url=str(upstream.path), sha=sha)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("kind", ["path", "file-url", "not-a-repository"])
def test_a_missing_repository_is_source_not_found(source, tmp_path, kind):
    missing = tmp_path / "nowhere" / "demo"
    if kind == "not-a-repository":
        missing.mkdir(parents=True)
    url = missing.as_uri() if kind == "file-url" else str(missing)

    with pytest.raises(SourceNotFound, match="not found"):
        source.fetch(clone_url=url, sha="1234abc")


def test_an_unreachable_host_is_source_unavailable(source):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before git connects

    with pytest.raises(SourceUnavailable) as caught:
        source.fetch(clone_url=f"http://127.0.0.1:{port}/octo-org/demo.git", sha="1234abc")

    assert "octo-org/demo" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(404, SourceNotFound), (401, SourceNotFound), (503, SourceUnavailable)],
)
def test_http_errors_are_classified_and_no_credential_leaks(error_server, source, status, expected):
    error_server.status = status
    host = error_server.url.removeprefix("http://")
    url = f"http://x-access-token:{TOKEN}@{host}/octo-org/demo.git"

    with pytest.raises(expected) as caught:
        source.fetch(clone_url=url, sha="1234abc" + "0" * 33, auth_header=AUTH_HEADER)

    assert error_server.headers[0]["authorization"] == f"basic {BASIC}"  # the header was sent
    assert "octo-org/demo" in str(caught.value)
    everything = "".join(traceback.format_exception(caught.value))  # with the chained cause
    assert_no_secret(everything)
    assert_no_secret(repr(caught.value.__cause__))
    for path in source._cache_dir.rglob("*"):
        assert_no_secret(path.name)
        if path.is_file():
            assert_no_secret(path.read_bytes().decode("latin-1"))


def test_a_hanging_server_is_killed_after_the_timeout(error_server, tmp_path):
    error_server.status = None
    source = GitSource(tmp_path / "cache", timeout=1)

    # The server hangs for 60 s (see ErrorServer): only our timeout says "timed out".
    with pytest.raises(SourceUnavailable, match="timed out after 1s"):
        source.fetch(clone_url=f"{error_server.url}/octo-org/demo.git", sha="1234abc")


def test_fetch_and_reads_wait_for_the_mirror_lock(upstream, tmp_path):
    url = str(upstream.path)
    sha = upstream.git("rev-parse", "HEAD")
    GitSource(tmp_path / "cache").fetch(clone_url=url, sha=sha)
    impatient = GitSource(tmp_path / "cache", timeout=0.2)  # waits 0.2 s for the lock
    # ...and gives git 0.2 s too, too little on a busy machine: what must succeed gets time.
    patient = GitSource(tmp_path / "cache", timeout=scaled(60))
    (lock,) = (tmp_path / "cache").glob("*.lock")

    with lock.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process is fetching
        with pytest.raises(SourceUnavailable, match="busy"):
            impatient.fetch(clone_url=url, sha=sha)
        with pytest.raises(SourceUnavailable, match="busy"):
            impatient.read_file(clone_url=url, sha=sha, path="README.md")
        fcntl.flock(held, fcntl.LOCK_SH)  # another process is exporting: reads go ahead
        assert patient.read_file(clone_url=url, sha=sha, path="README.md") == b"# demo\n"
        with pytest.raises(SourceUnavailable, match="busy"):
            impatient.fetch(clone_url=url, sha=sha)


def test_the_auth_header_never_reaches_the_mirror(upstream, source):
    sha = upstream.git("rev-parse", "HEAD")

    source.fetch(clone_url=str(upstream.path), sha=sha, auth_header=AUTH_HEADER)

    mirror = only_mirror(source._cache_dir)
    config = subprocess.run(
        ["git", "--git-dir", str(mirror), "config", "--list"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "extraheader" not in config.lower()
    assert_no_secret(config)
    for path in source._cache_dir.rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_bytes().decode("latin-1"))


def test_concurrent_fetches_of_one_mirror_are_safe(upstream, tmp_path):
    url = str(upstream.path)
    commits = [upstream.git("rev-parse", "HEAD"), upstream.commit({"README.md": "two\n"})]
    cache = tmp_path / "cache"
    start = threading.Barrier(4)

    def deploy(index: int) -> str:
        source = GitSource(cache, timeout=60)  # as separate processes would: own descriptors
        start.wait(timeout=scaled(60))
        source.fetch(clone_url=url, sha=commits[index % 2])
        return source.export(clone_url=url, sha=commits[0], dest=tmp_path / f"out{index}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(deploy, range(4)))

    assert len(set(digests)) == 1
    only_mirror(cache)
    fsck = subprocess.run(
        ["git", "--git-dir", str(only_mirror(cache)), "fsck", "--strict"], capture_output=True
    )
    assert fsck.returncode == 0, fsck.stderr


# --- export -------------------------------------------------------------------------


def test_export_writes_the_tree_with_exec_bits_and_symlinks(upstream, source, tmp_path):
    url = str(upstream.path)
    sha = upstream.git("rev-parse", "HEAD")
    source.fetch(clone_url=url, sha=sha)
    (tmp_path / "again").mkdir()  # an existing empty directory is fine

    digest = source.export(clone_url=url, sha=sha, dest=tmp_path / "out")
    again = source.export(clone_url=url, sha=sha, dest=tmp_path / "again")

    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "README.md", "bin", "bin/start.sh", "tasks", "tasks/greet.py", "tasks/hello.py",
    ]  # fmt: skip
    assert (out / "README.md").read_text() == "# demo\n"
    assert os.stat(out / "bin" / "start.sh").st_mode & stat.S_IXUSR
    assert not os.stat(out / "README.md").st_mode & stat.S_IXUSR
    assert os.readlink(out / "tasks" / "greet.py") == "hello.py"
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert digest == again == content_digest(out)


def test_the_digest_changes_with_the_exec_bit(upstream, source, tmp_path):
    url = str(upstream.path)
    before = upstream.git("rev-parse", "HEAD")
    (upstream.path / "README.md").chmod(0o755)
    after = upstream.commit()
    source.fetch(clone_url=url, sha=after)

    digests = {source.export(clone_url=url, sha=s, dest=tmp_path / s) for s in (before, after)}

    assert len(digests) == 2


def test_export_is_the_exact_tree_whatever_gitattributes_say(upstream, source, tmp_path):
    url = str(upstream.path)
    sha = upstream.commit(
        {
            ".gitattributes": "secret.txt export-ignore\nversion.txt export-subst\n",
            "secret.txt": "still deployed\n",
            "version.txt": "$Format:%H %d$\n",
        }
    )
    source.fetch(clone_url=url, sha=sha)

    source.export(clone_url=url, sha=sha, dest=tmp_path / "out")

    assert (tmp_path / "out" / "secret.txt").read_text() == "still deployed\n"
    assert (tmp_path / "out" / "version.txt").read_text() == "$Format:%H %d$\n"


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../../etc/passwd"])
def test_export_refuses_a_symlink_out_of_the_tree(upstream, source, tmp_path, target):
    url = str(upstream.path)
    sha = upstream.commit(symlinks={"tasks/leak": target})
    source.fetch(clone_url=url, sha=sha)
    exports = tmp_path / "exports"
    exports.mkdir()

    with pytest.raises(PermanentError, match="tasks/leak"):
        source.export(clone_url=url, sha=sha, dest=exports / "out")

    assert list(exports.iterdir()) == []
    assert [p.name for p in source._cache_dir.iterdir() if p.name.startswith(".")] == []


def test_export_of_a_commit_never_fetched_is_source_not_found(upstream, source, tmp_path):
    sha = upstream.git("rev-parse", "HEAD")

    with pytest.raises(SourceNotFound, match="fetch it first"):
        source.export(clone_url=str(upstream.path), sha=sha, dest=tmp_path / "out")

    assert not (tmp_path / "out").exists()


# --- read_file ----------------------------------------------------------------------


def test_read_file(upstream, source):
    url = str(upstream.path)
    sha = upstream.commit(
        {"config/slipway.toml": "tasks_dir = 'tasks'\n", "big.txt": "x" * 2000},
        symlinks={"slipway.toml": "config/slipway.toml", "outside.toml": "../../etc/passwd"},
    )
    source.fetch(clone_url=url, sha=sha)

    def read(path: str, **kwargs: int) -> bytes | None:
        return source.read_file(clone_url=url, sha=sha, path=path, **kwargs)

    assert read("README.md") == b"# demo\n"
    assert read("./tasks//hello.py") == b"def run(payload, ctx):\n    return 'hello'\n"
    assert read("slipway.toml") == b"tasks_dir = 'tasks'\n"  # an in-tree symlink is followed
    assert read("tasks/greet.py") == read("tasks/hello.py")
    assert read("outside.toml") is None
    assert read("missing.toml") is None
    assert read("tasks") is None
    assert read("big.txt", max_bytes=2000) == b"x" * 2000
    with pytest.raises(PermanentError, match="more than the 1999 allowed"):
        read("big.txt", max_bytes=1999)
    for bad in ("../secret", "/etc/passwd", ""):
        with pytest.raises(PermanentError, match="invalid path"):
            read(bad)


# --- list_tracked_files -------------------------------------------------------------


def test_list_tracked_files_lists_tracked_files_only(make_repo, tmp_path):
    repo = make_repo(tmp_path / "project")
    repo.commit({".gitignore": "*.log\n", "app/main.py": "", "app/data.txt": ""})
    repo.write({"app/untracked.py": "", "app/debug.log": ""})

    assert list_tracked_files(repo.path) == [".gitignore", "app/data.txt", "app/main.py"]
    assert list_tracked_files(repo.path / "app") == ["data.txt", "main.py"]


def test_list_tracked_files_is_none_outside_git(tmp_path):
    (tmp_path / "plain").mkdir()

    assert list_tracked_files(tmp_path / "plain") is None
