"""Git source: one bare mirror per repository, fetched incrementally, exported as plain trees.

This is the only module that imports GitPython (hence its length: every git command, the
scrubbing of its output and the classification of its failures stay behind one
boundary). It turns git's failures into
:class:`SourceNotFound` (permanent: no such repository, commit or access) or
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

Credentials. ``auth_header`` reaches git as ``http.extraHeader`` through
``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` of that one command: the
same as ``git -c``, but not visible in ``ps`` and never part of a command line that could
end up in an exception. git's stderr is scrubbed (URL userinfo, the header and its parts)
before it reaches any message; the cause chained to our errors holds only scrubbed text.

Resolving. :meth:`GitSource.resolve` asks the remote (``git ls-remote --symref``) which
commit a branch, or ``HEAD`` (the default branch), points at. It touches no mirror and
takes no lock, so the resync can ask about many repositories at once while fetches run.

Exports. ``git archive`` into a temporary tar, unpacked by
:func:`~controller.sources.archive.safe_extract`. The mirror's ``info/attributes`` turns
off ``export-subst`` and ``export-ignore``, so an export is exactly the commit's tree and
its digest depends on nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import re
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import git

from controller.datadir import private_dir
from controller.errors import (
    InvalidInput,
    NotFound,
    PermanentError,
    SourceNotFound,
    SourceUnavailable,
)
from controller.sources.archive import content_digest, safe_extract
from controller.sources.base import Resolved

_SHA = re.compile(r"[0-9a-f]{7,40}")
_REF = re.compile(r"refs/[A-Za-z0-9_./-]+")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
_MISSING_REF = re.compile(
    r"not our ref|couldn't find remote ref|no such remote ref|unadvertised object", re.I
)
_NO_ACCESS = re.compile(
    r"repository not found|repository '[^']*' not found|does not appear to be a git repository"
    r"|authentication failed|could not read (username|password)|permission denied \(publickey"
    r"|returned error: (401|403|404)",
    re.I,
)
_PINS = "refs/slipway/commits/"
_ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
_MIRROR_ATTRIBUTES = "* -export-subst -export-ignore\n"
_LOCAL_TIMEOUT = 60.0
_MAX_SYMLINKS = 8
_MAX_DETAIL = 4000


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
        sha = _check_sha(sha)
        for ref in refs:
            _check_ref(ref)
        remote = _parse_remote(clone_url)
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
        sha = _check_sha(sha)
        remote = _parse_remote(clone_url)
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
        sha = _check_sha(sha)
        name = _tree_path(path)
        remote = _parse_remote(clone_url)
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
        if ref != "HEAD":
            _check_ref(ref)
        remote = _parse_remote(clone_url)
        if remote.local_path is not None and not remote.local_path.exists():
            raise SourceNotFound(f"repository {remote.name} not found: the path does not exist")
        limit = timeout or self._timeout
        config = [("http.extraHeader", auth_header)] if auth_header else []
        try:
            out = _run(
                ["ls-remote", "--symref", "--", remote.url, ref],
                timeout=limit,
                config=config,
                secrets=_secrets(auth_header),
            )
        except _GitFailed as exc:
            if exc.timed_out:
                raise SourceUnavailable(
                    f"asking {remote.name} for {ref} timed out after {limit:g}s"
                ) from exc
            if _NO_ACCESS.search(exc.detail):
                raise SourceNotFound(
                    f"repository {remote.name} not found or not accessible: {_summary(exc.detail)}",
                    hint="check the clone URL and that Slipway has access to the repository",
                ) from exc
            raise SourceUnavailable(
                f"could not ask {remote.name} for {ref}: {_summary(exc.detail)}"
            ) from exc
        target, sha = ref, None
        for line in out.decode(errors="replace").splitlines():
            value, _, name = line.partition("\t")
            if name != ref:
                continue  # ls-remote matches patterns on their tail: keep the exact ref only
            if value.startswith("ref: "):
                target = value[len("ref: ") :].strip()
            elif _SHA.fullmatch(value.strip()):
                sha = value.strip()
        if sha is None or not target.startswith("refs/heads/"):
            return None
        return Resolved(ref=target, sha=sha)

    def probe(self, *, clone_url: str, timeout: float = 10.0) -> None:
        """Check that ``clone_url`` answers as a git repository (``git ls-remote``).

        A local path that is missing or not a repository is :class:`NotFound` (the
        caller can fix it now); a remote that denies access or does not exist is
        :class:`SourceNotFound`, one that cannot be reached in ``timeout`` seconds
        :class:`SourceUnavailable`. Nothing is written.
        """
        remote = _parse_remote(clone_url)
        local_hint = "pass the path of a git repository, or a file://, https:// or ssh URL"
        if remote.local_path is not None and not remote.local_path.is_dir():
            raise NotFound(f"{remote.name} is not a directory", hint=local_hint)
        try:
            _run(["ls-remote", "--heads", "--", remote.url], timeout=timeout)
        except _GitFailed as exc:
            if exc.timed_out:
                raise SourceUnavailable(
                    f"{remote.name} did not answer within {timeout:g}s"
                ) from exc
            if remote.local_path is not None:
                raise NotFound(f"{remote.name} is not a git repository", hint=local_hint) from exc
            if _NO_ACCESS.search(exc.detail):
                raise SourceNotFound(
                    f"{remote.name} is not a git repository or not accessible: "
                    f"{_summary(exc.detail)}"
                ) from exc
            raise SourceUnavailable(
                f"could not reach {remote.name}: {_summary(exc.detail)}"
            ) from exc

    # --- internals ----------------------------------------------------------------

    def _mirror(self, remote: _Remote) -> Path:
        return self._cache_dir / f"{remote.key}.git"

    @contextlib.contextmanager
    def _locked(self, remote: _Remote, *, exclusive: bool) -> Iterator[None]:
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

    def _init_mirror(self, remote: _Remote, mirror: Path) -> None:
        attributes = mirror / "info" / "attributes"
        if attributes.exists():
            return
        # Idempotent, so an init interrupted before the attributes were written is redone.
        self._git(remote, mirror, "init", "--bare", "--quiet", "--template=")
        attributes.parent.mkdir(exist_ok=True)
        attributes.write_text(_MIRROR_ATTRIBUTES)

    def _download(
        self,
        remote: _Remote,
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
                _run(
                    [
                        *("--git-dir", str(mirror), "fetch", "--quiet", "--no-tags"),
                        *("--no-write-fetch-head", "--no-recurse-submodules"),
                        *("--", remote.url, *refspecs),
                    ],
                    timeout=self._timeout,
                    config=config,
                    secrets=_secrets(auth_header),
                )
            except _GitFailed as exc:
                if _MISSING_REF.search(exc.detail):
                    continue
                raise self._fetch_error(remote, exc) from exc
            full = self._resolve(mirror, sha)
            if full is not None:
                return full
        raise SourceNotFound(
            f"commit {sha[:7]} not found in {remote.name}",
            hint="was the branch force-pushed, or the commit pushed to another repository?",
        )

    def _fetch_error(self, remote: _Remote, exc: _GitFailed) -> SourceNotFound | SourceUnavailable:
        if exc.timed_out:
            return SourceUnavailable(f"fetching {remote.name} timed out after {self._timeout:g}s")
        if _NO_ACCESS.search(exc.detail):
            return SourceNotFound(
                f"repository {remote.name} not found or not accessible: {_summary(exc.detail)}",
                hint="check the clone URL and that Slipway has access to the repository",
            )
        return SourceUnavailable(f"could not fetch {remote.name}: {_summary(exc.detail)}")

    def _resolve(self, mirror: Path, sha: str) -> str | None:
        try:
            out = _run(
                ["--git-dir", str(mirror), "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}"],
                timeout=self._timeout,
            )
        except _GitFailed:
            return None
        return out.decode().strip()

    def _require(self, remote: _Remote, mirror: Path, sha: str) -> str:
        full = self._resolve(mirror, sha)
        if full is None:
            raise SourceNotFound(
                f"commit {sha[:7]} of {remote.name} is not in the local mirror",
                hint="fetch it first",
            )
        return full

    def _tree_entry(
        self, remote: _Remote, mirror: Path, commit: str, name: str
    ) -> tuple[str, str, str] | None:
        out = self._git(remote, mirror, "ls-tree", "-z", commit, "--", name)
        for record in out.split(b"\0"):
            meta, _, entry_path = record.partition(b"\t")
            if os.fsdecode(entry_path) == name:
                mode, kind, oid = meta.decode().split()
                return mode, kind, oid
        return None

    def _git(self, remote: _Remote, mirror: Path, *args: str) -> bytes:
        """Run a local git command on the mirror; a failure is temporary (disk, timeout)."""
        try:
            return _run(["--git-dir", str(mirror), *args], timeout=self._timeout)
        except _GitFailed as exc:
            raise SourceUnavailable(
                f"git {args[0]} failed for the mirror of {remote.name}: {_summary(exc.detail)}"
            ) from exc


def list_tracked_files(path: Path) -> list[str] | None:
    """Return the git-tracked files under ``path`` (relative to it), ``None`` if not in git."""
    try:
        out = _run(["-C", str(path), "ls-files", "-z", "--cached"], timeout=_LOCAL_TIMEOUT)
    except (_GitFailed, SourceUnavailable):
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
        sha = _run(["-C", str(path), "rev-parse", "--verify", "HEAD"], timeout=_LOCAL_TIMEOUT)
        status = _run(
            ["-C", str(path), "status", "--porcelain", "--untracked-files=no", "--", "."],
            timeout=_LOCAL_TIMEOUT,
        )
    except (_GitFailed, SourceUnavailable):
        return None
    return WorktreeState(sha=sha.decode().strip(), dirty=bool(status.strip()))


# --- running git ----------------------------------------------------------------------


class _GitFailed(Exception):
    """A git command exited non-zero; ``detail`` (its stderr) is already scrubbed."""

    def __init__(self, detail: str, *, timed_out: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.timed_out = timed_out


def _run(
    args: Sequence[str],
    *,
    timeout: float,
    config: Sequence[tuple[str, str]] = (),
    secrets: Sequence[str] = (),
) -> bytes:
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GCM_INTERACTIVE": "never",
        "GIT_ALLOW_PROTOCOL": _ALLOWED_PROTOCOLS,  # no ext:: or fd:: from a clone URL
        "GIT_LITERAL_PATHSPECS": "1",
    }
    first = int(os.environ.get("GIT_CONFIG_COUNT") or 0)
    for index, (key, value) in enumerate(config, start=first):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    env["GIT_CONFIG_COUNT"] = str(first + len(config))
    try:
        status, out, err = git.Git().execute(
            ["git", *args],
            env=env,
            kill_after_timeout=timeout,
            with_extended_output=True,
            with_exceptions=False,
            stdout_as_string=False,
            strip_newline_in_stdout=False,
        )
    except git.GitCommandNotFound as exc:
        raise SourceUnavailable("git is not installed on the controller") from exc
    if status != 0:
        timed_out = status == -signal.SIGKILL or err.startswith("Timeout:")
        raise _GitFailed(_scrub(err, secrets)[-_MAX_DETAIL:], timed_out=timed_out)
    return out


def _secrets(auth_header: str | None) -> tuple[str, ...]:
    if not auth_header:
        return ()
    value = auth_header.partition(":")[2].strip()
    return (auth_header, value, *(word for word in value.split() if len(word) >= 8))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _redact(text)


def _redact(text: str) -> str:
    """Drop the userinfo (``user:token@``) of every URL in ``text``."""
    return _USERINFO.sub(r"\1", text)


def _summary(detail: str) -> str:
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    return "; ".join(lines[-3:])[-500:] or "no error output"


# --- names ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Remote:
    url: str = field(repr=False)  # what git fetches from; may hold credentials
    key: str  # the mirror's name: a hash, never the URL
    name: str  # for messages: owner/name or a local path, never credentials
    local_path: Path | None


def _parse_remote(clone_url: str) -> _Remote:
    if not clone_url or clone_url.startswith("-") or any(c in clone_url for c in "\0\r\n"):
        raise SourceNotFound(f"invalid clone URL {_redact(clone_url)!r:.200}")
    if clone_url.startswith("file://"):
        local: Path | None = Path(os.path.abspath(unquote(urlsplit(clone_url).path)))
        url = clone_url
    elif "://" in clone_url or (":" in clone_url.split("/", 1)[0] and clone_url[0] != "."):
        local, url = None, clone_url  # a network URL or scp-like host:path
    else:
        local = Path(os.path.abspath(clone_url))
        url = str(local)  # fetches run elsewhere: a relative path must not change meaning
    identity = str(local) if local is not None else _redact(clone_url)
    return _Remote(
        url=url,
        key=hashlib.sha256(identity.encode()).hexdigest()[:32],
        name=str(local) if local is not None else _short_name(identity),
        local_path=local,
    )


def _short_name(url: str) -> str:
    if "://" in url:
        parts = urlsplit(url)
        host, path = parts.hostname or "", parts.path
    else:
        host, _, path = url.partition(":")
        host = host.rpartition("@")[2]
    segments = [s for s in path.rstrip("/").removesuffix(".git").split("/") if s]
    return "/".join(segments[-2:]) or host or "the repository"


def _check_sha(sha: str) -> str:
    if not _SHA.fullmatch(sha.lower()):
        raise SourceNotFound(f"{sha!r:.60} is not a commit sha (7 to 40 hex digits)")
    return sha.lower()


def _check_ref(ref: str) -> None:
    if not _REF.fullmatch(ref) or ".." in ref or "/." in ref or ref.endswith((".lock", "/")):
        raise SourceNotFound(f"{ref!r:.200} is not a valid ref name")


def _tree_path(path: str) -> str:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if path.startswith("/") or not parts or ".." in parts or "\0" in path:
        raise PermanentError(f"invalid path {path!r:.200}: it must be relative to the repo root")
    return "/".join(parts)
