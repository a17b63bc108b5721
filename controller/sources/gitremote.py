"""Asking a remote without a mirror: ``git ls-remote`` for resolving a ref and for probing
a clone URL.

Both questions run the one :func:`ls_remote`, which classifies git's failure the same way
for both: a timeout or an unreachable remote is :class:`SourceUnavailable`, a remote that
does not exist or denies access :class:`SourceNotFound`. Neither touches a mirror or takes
a lock, so the resync can ask about many repositories at once while fetches run.
"""

from __future__ import annotations

from controller.errors import NotFound, SourceNotFound, SourceUnavailable
from controller.sources.base import Resolved
from controller.sources.gitrun import (
    NO_ACCESS,
    SHA,
    GitFailed,
    Remote,
    check_ref,
    parse_remote,
    run_git,
    secrets_of,
    summarize,
)

_LOCAL_HINT = "pass the path of a git repository, or a file://, https:// or ssh URL"


def ls_remote(
    remote: Remote, *, ref: str | None, timeout: float, auth_header: str | None = None
) -> bytes:
    """``git ls-remote --symref`` of ``ref``, or of the branch heads when ``ref`` is
    ``None``; its output, or a classified error naming ``remote.name`` only."""
    subject = f"{remote.name} for {ref}" if ref else remote.name
    args = ["--symref", "--", remote.url, ref] if ref else ["--heads", "--", remote.url]
    config = [("http.extraHeader", auth_header)] if auth_header else []
    try:
        return run_git(
            ["ls-remote", *args], timeout=timeout, config=config, secrets=secrets_of(auth_header)
        )
    except GitFailed as exc:
        if exc.timed_out:
            raise SourceUnavailable(f"asking {subject} timed out after {timeout:g}s") from exc
        if NO_ACCESS.search(exc.detail):
            raise SourceNotFound(
                f"repository {remote.name} not found or not accessible: {summarize(exc.detail)}",
                hint="check the clone URL and that Slipway has access to the repository",
            ) from exc
        raise SourceUnavailable(f"could not ask {subject}: {summarize(exc.detail)}") from exc


def resolve_ref(
    ref: str, *, clone_url: str, timeout: float, auth_header: str | None = None
) -> Resolved | None:
    """Where ``ref`` (``HEAD`` or ``refs/heads/<branch>``) of ``clone_url`` points,
    ``HEAD`` followed to its branch; ``None`` when the remote has no such ref."""
    if ref != "HEAD":
        check_ref(ref)
    remote = parse_remote(clone_url)
    if remote.local_path is not None and not remote.local_path.exists():
        raise SourceNotFound(f"repository {remote.name} not found: the path does not exist")
    out = ls_remote(remote, ref=ref, timeout=timeout, auth_header=auth_header)
    target, sha = ref, None
    for line in out.decode(errors="replace").splitlines():
        value, _, name = line.partition("\t")
        if name != ref:
            continue  # ls-remote matches patterns on their tail: keep the exact ref only
        if value.startswith("ref: "):
            target = value[len("ref: ") :].strip()
        elif SHA.fullmatch(value.strip()):
            sha = value.strip()
    if sha is None or not target.startswith("refs/heads/"):
        return None
    return Resolved(ref=target, sha=sha)


def probe_remote(*, clone_url: str, timeout: float) -> None:
    """Check that ``clone_url`` answers as a git repository. A local path that is missing
    or not a repository is :class:`NotFound` (the caller can fix it now)."""
    remote = parse_remote(clone_url)
    if remote.local_path is not None and not remote.local_path.is_dir():
        raise NotFound(f"{remote.name} is not a directory", hint=_LOCAL_HINT)
    try:
        ls_remote(remote, ref=None, timeout=timeout)
    except SourceNotFound as exc:
        if remote.local_path is not None:
            raise NotFound(f"{remote.name} is not a git repository", hint=_LOCAL_HINT) from exc
        raise
