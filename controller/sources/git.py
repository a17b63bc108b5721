"""Git source: one bare mirror per repository, fetched incrementally, exported as plain trees.

Running git (GitPython, the scrubbing of its output, clone URL names) is
:mod:`controller.sources.gitrun`; asking a remote without a mirror (``ls-remote``:
resolve, probe) is :mod:`controller.sources.gitremote`. This module turns git's failures
into :class:`SourceNotFound` (permanent: no such repository, commit or access) or
:class:`SourceUnavailable` (temporary: network, timeouts, a busy mirror).

Mirrors. ``cache_dir/<key>.git`` is a bare repository per clone URL; ``key`` is a hash of
the URL without its userinfo, so no URL or credential ever appears in a path and rotating
tokens share a mirror. No remote is configured and FETCH_HEAD is not written: the URL is
passed to each fetch and never stored. Every fetched commit is pinned under
``refs/slipway/commits/<sha>``, so neither a force push nor ``git gc`` drops it later.

Locking. ``cache_dir/<key>.lock`` is flock'ed exclusively by ``fetch`` (which writes
objects and refs and may run gc) and shared by ``export`` and ``read_file``. flock holds
across processes, and across threads too, as every call opens its own descriptor.

Fetching. A commit already in the mirror is not fetched again. Otherwise, cheapest first:
the sha itself (servers allow reachable commits with protocol v2), the caller's ``refs``
(e.g. ``refs/pull/7/head``), then all branches and tags.

Credentials. ``auth_header`` reaches git as ``http.extraHeader`` of that one command,
never on a command line or in a message (see :mod:`controller.sources.gitrun`).

Resolving. :meth:`GitSource.resolve` asks the remote (``git ls-remote --symref``) which
commit a branch, or ``HEAD`` (the default branch), points at; :meth:`GitSource.probe`
checks that a clone URL answers. Both touch no mirror and take no lock.

Exports. ``git archive`` into a temporary tar, unpacked by
:func:`~controller.sources.archive.safe_extract`. The mirror's ``info/attributes`` turns
off ``export-subst`` and ``export-ignore``, so an export is exactly the commit's tree and
its digest depends on nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.datadir import private_dir
from controller.errors import InvalidInput, PermanentError, SourceNotFound, SourceUnavailable
from controller.sources.archive import content_digest, safe_extract
from controller.sources.base import Resolved
from controller.sources.gitremote import probe_remote, resolve_ref
from controller.sources.gitrun import (
    MISSING_REF,
    NO_ACCESS,
    GitFailed,
    Remote,
    check_ref,
    check_sha,
    parse_remote,
    run_git,
    secrets_of,
    summarize,
    tree_path,
)

_PINS = "refs/slipway/commits/"
_MIRROR_ATTRIBUTES = "* -export-subst -export-ignore\n"
_LOCAL_TIMEOUT = 60.0
_MAX_SYMLINKS = 8


class GitSource:
    """Bare mirrors of git repositories under ``cache_dir`` (see the module docstring)."""

    def __init__(self, cache_dir: Path, *, timeout: float = 300.0) -> None:
        self._cache_dir = cache_dir
        self._timeout = timeout

    def fetch(
        self,
        *,
        clone_url: str,
        sha: str,
        refs: Sequence[str] = (),
        auth_header: str | None = None,
    ) -> None:
        """Make sure commit ``sha`` of ``clone_url`` is in the mirror, fetching if needed."""
        sha = check_sha(sha)
        for ref in refs:
            check_ref(ref)
        remote = parse_remote(clone_url)
        mirror = self._mirror(remote)
        with self._locked(remote, exclusive=True):
            self._init_mirror(remote, mirror)
            full = self._resolve(mirror, sha)
            if full is None:
                full = self._download(remote, mirror, sha, refs, auth_header)
            self._git(remote, mirror, "update-ref", _PINS + full, full)

    def export(self, *, clone_url: str, sha: str, dest: Path) -> str:
        """Write the tree of a fetched commit into ``dest``; return its content digest.

        ``dest`` must not exist or be an empty directory. A tree that cannot be unpacked
        safely (a symlink pointing outside it, too large) is a :class:`PermanentError`.
        """
        sha = check_sha(sha)
        remote = parse_remote(clone_url)
        mirror = self._mirror(remote)
        private_dir(self._cache_dir)
        with tempfile.TemporaryDirectory(prefix=".export-", dir=self._cache_dir) as tmp:
            tree = Path(tmp) / "tree.tar"
            with self._locked(remote, exclusive=False):
                full = self._require(remote, mirror, sha)
                self._git(remote, mirror, "archive", "--format=tar", f"--output={tree}", full)
            try:
                safe_extract(tree, dest)
            except InvalidInput as exc:
                raise PermanentError(
                    f"commit {sha[:7]} of {remote.name} cannot be deployed: {exc.message}"
                ) from exc
        return content_digest(dest)

    def read_file(
        self, *, clone_url: str, sha: str, path: str, max_bytes: int = 1 << 20
    ) -> bytes | None:
        """Return the content of ``path`` at a fetched commit, or ``None`` if it is absent.

        Symlinks inside the tree are followed; a file over ``max_bytes`` is a
        :class:`PermanentError`.
        """
        sha = check_sha(sha)
        name = tree_path(path)
        remote = parse_remote(clone_url)
        mirror = self._mirror(remote)
        with self._locked(remote, exclusive=False):
            full = self._require(remote, mirror, sha)
            for _ in range(_MAX_SYMLINKS + 1):
                entry = self._tree_entry(remote, mirror, full, name)
                if entry is None:
                    return None
                mode, kind, oid = entry
                cat_file = (remote, mirror, "cat-file")
                if mode == "120000":
                    target = os.fsdecode(self._git(*cat_file, "blob", oid))
                    name = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                    if target.startswith("/") or name == ".." or name.startswith("../"):
                        return None
                    continue
                if kind != "blob":
                    return None
                size = int(self._git(*cat_file, "-s", oid))
                if size > max_bytes:
                    raise PermanentError(
                        f"{path} at commit {sha[:7]} of {remote.name} is {size} bytes, "
                        f"more than the {max_bytes} allowed"
                    )
                return self._git(*cat_file, "blob", oid)
            return None  # a symlink loop

    def resolve(
        self,
        ref: str,
        *,
        clone_url: str,
        timeout: float | None = None,
        auth_header: str | None = None,
    ) -> Resolved | None:
        """Ask ``clone_url`` where ``ref`` (``HEAD`` or ``refs/heads/<branch>``) points,
        following ``HEAD`` to its branch. ``None``: the remote has no such ref (or is
        empty). A failure raises :class:`SourceNotFound` or :class:`SourceUnavailable`."""
        limit = timeout or self._timeout
        return resolve_ref(ref, clone_url=clone_url, timeout=limit, auth_header=auth_header)

    def probe(self, *, clone_url: str, timeout: float = 10.0) -> None:
        """Check that ``clone_url`` answers as a git repository (``git ls-remote``).

        A local path that is missing or not a repository is :class:`NotFound` (the
        caller can fix it now); a remote that denies access or does not exist is
        :class:`SourceNotFound`, one that cannot be reached in ``timeout`` seconds
        :class:`SourceUnavailable`. Nothing is written.
        """
        probe_remote(clone_url=clone_url, timeout=timeout)

    # --- internals ----------------------------------------------------------------

    def _mirror(self, remote: Remote) -> Path:
        return self._cache_dir / f"{remote.key}.git"

    @contextlib.contextmanager
    def _locked(self, remote: Remote, *, exclusive: bool) -> Iterator[None]:
        private_dir(self._cache_dir)
        fd = os.open(self._cache_dir / f"{remote.key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            deadline = time.monotonic() + self._timeout
            pause = 0.01
            while True:
                try:
                    fcntl.flock(fd, operation)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SourceUnavailable(
                            f"the mirror of {remote.name} stayed busy for {self._timeout:g}s"
                        ) from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.5)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _init_mirror(self, remote: Remote, mirror: Path) -> None:
        attributes = mirror / "info" / "attributes"
        if attributes.exists():
            return
        # Idempotent, so an init interrupted before the attributes were written is redone.
        self._git(remote, mirror, "init", "--bare", "--quiet", "--template=")
        attributes.parent.mkdir(exist_ok=True)
        attributes.write_text(_MIRROR_ATTRIBUTES)

    def _download(
        self,
        remote: Remote,
        mirror: Path,
        sha: str,
        refs: Sequence[str],
        auth_header: str | None,
    ) -> str:
        if remote.local_path is not None and not remote.local_path.exists():
            raise SourceNotFound(f"repository {remote.name} not found: the path does not exist")
        attempts = [[f"+{sha}:{_PINS}{sha}"]] if len(sha) == 40 else []
        attempts += [[f"+{ref}:{ref}"] for ref in refs]
        attempts.append(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"])
        config = [("gc.autoDetach", "false"), ("maintenance.autoDetach", "false")]
        if auth_header:
            config.append(("http.extraHeader", auth_header))
        for refspecs in attempts:
            try:
                run_git(
                    [
                        *("--git-dir", str(mirror), "fetch", "--quiet", "--no-tags"),
                        *("--no-write-fetch-head", "--no-recurse-submodules"),
                        *("--", remote.url, *refspecs),
                    ],
                    timeout=self._timeout,
                    config=config,
                    secrets=secrets_of(auth_header),
                )
            except GitFailed as exc:
                if MISSING_REF.search(exc.detail):
                    continue
                raise self._fetch_error(remote, exc) from exc
            full = self._resolve(mirror, sha)
            if full is not None:
                return full
        raise SourceNotFound(
            f"commit {sha[:7]} not found in {remote.name}",
            hint="was the branch force-pushed, or the commit pushed to another repository?",
        )

    def _fetch_error(self, remote: Remote, exc: GitFailed) -> SourceNotFound | SourceUnavailable:
        if exc.timed_out:
            return SourceUnavailable(f"fetching {remote.name} timed out after {self._timeout:g}s")
        if NO_ACCESS.search(exc.detail):
            return SourceNotFound(
                f"repository {remote.name} not found or not accessible: {summarize(exc.detail)}",
                hint="check the clone URL and that Slipway has access to the repository",
            )
        return SourceUnavailable(f"could not fetch {remote.name}: {summarize(exc.detail)}")

    def _resolve(self, mirror: Path, sha: str) -> str | None:
        try:
            out = run_git(
                ["--git-dir", str(mirror), "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}"],
                timeout=self._timeout,
            )
        except GitFailed:
            return None
        return out.decode().strip()

    def _require(self, remote: Remote, mirror: Path, sha: str) -> str:
        full = self._resolve(mirror, sha)
        if full is None:
            raise SourceNotFound(
                f"commit {sha[:7]} of {remote.name} is not in the local mirror",
                hint="fetch it first",
            )
        return full

    def _tree_entry(
        self, remote: Remote, mirror: Path, commit: str, name: str
    ) -> tuple[str, str, str] | None:
        out = self._git(remote, mirror, "ls-tree", "-z", commit, "--", name)
        for record in out.split(b"\0"):
            meta, _, entry_path = record.partition(b"\t")
            if os.fsdecode(entry_path) == name:
                mode, kind, oid = meta.decode().split()
                return mode, kind, oid
        return None

    def _git(self, remote: Remote, mirror: Path, *args: str) -> bytes:
        """Run a local git command on the mirror; a failure is temporary (disk, timeout)."""
        try:
            return run_git(["--git-dir", str(mirror), *args], timeout=self._timeout)
        except GitFailed as exc:
            raise SourceUnavailable(
                f"git {args[0]} failed for the mirror of {remote.name}: {summarize(exc.detail)}"
            ) from exc


def list_tracked_files(path: Path) -> list[str] | None:
    """Return the git-tracked files under ``path`` (relative to it), ``None`` if not in git."""
    try:
        out = run_git(["-C", str(path), "ls-files", "-z", "--cached"], timeout=_LOCAL_TIMEOUT)
    except (GitFailed, SourceUnavailable):
        return None
    return [os.fsdecode(name) for name in out.split(b"\0") if name]


@dataclass(frozen=True)
class WorktreeState:
    sha: str  # HEAD
    dirty: bool  # tracked files under the path differ from HEAD (staged or not)


def describe_worktree(path: Path) -> WorktreeState | None:
    """HEAD of the git working tree ``path`` is in, and whether the tracked files under
    ``path`` changed since; ``None`` outside git or before the first commit."""
    try:
        sha = run_git(["-C", str(path), "rev-parse", "--verify", "HEAD"], timeout=_LOCAL_TIMEOUT)
        status = run_git(
            ["-C", str(path), "status", "--porcelain", "--untracked-files=no", "--", "."],
            timeout=_LOCAL_TIMEOUT,
        )
    except (GitFailed, SourceUnavailable):
        return None
    return WorktreeState(sha=sha.decode().strip(), dirty=bool(status.strip()))
