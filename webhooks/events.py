"""Typed views of the webhook payload fields Slipway uses.

Only what routing needs is read, defensively: GitHub adds fields freely, and a missing
optional field must not turn a delivery into an exception. Parsing is pure.

The views refuse wrong shapes instead of passing them on. A validly signed payload is
still untrusted input (a misconfigured proxy, a bug on the sender's side, a leaked
secret), and a field of the wrong type used to surface much later as a ``TypeError`` in
routing or an overflow in the database, retried for minutes and poisoning the routing
batch it was in. Every field routing reads is checked here and a bad one raises
:class:`PayloadError` with the field's name, so the delivery is recorded as rejected
with that reason, at once. Commit shas must be hex (40 or 64 digits, SHA-1 or SHA-256
repositories): they reach ``git`` later. Ids must fit the database's 64-bit integers;
names and refs must fit their columns (255 characters) and hold no NUL, which
PostgreSQL refuses in text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")

ZERO_SHA = "0" * 40
MAX_ID = 2**63 - 1
MAX_TEXT = 255  # names and refs routing stores (branch and ref columns)
_SHA = re.compile(r"[0-9a-fA-F]{40}(?:[0-9a-fA-F]{24})?")


class PayloadError(ValueError):
    """The payload lacks a field this event must have."""


def _get(data: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(data, dict):
            return None
        data = data.get(name)
    return data


def _checked_text(value: str, path: tuple[str, ...]) -> str:
    if len(value) > MAX_TEXT or "\x00" in value:
        raise PayloadError(f"payload field {'.'.join(path)} is not a name Slipway can store")
    return value


def _req_str(data: Any, *path: str) -> str:
    value = _get(data, *path)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"payload has no {'.'.join(path)}")
    return _checked_text(value, path)


def _opt(data: Any, kind: type[_T], *path: str) -> _T | None:
    """The field at ``path`` if it is a ``kind``; None if absent or null; else refused."""
    value = _get(data, *path)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise PayloadError(f"payload field {'.'.join(path)} is not a {kind.__name__}")
    if isinstance(value, str):
        _checked_text(value, path)
    return value


def _flag(data: Any, *path: str) -> bool:
    return bool(_opt(data, bool, *path))


def _sha(data: Any, *path: str) -> str:
    value = _opt(data, str, *path) or ZERO_SHA
    if not _SHA.fullmatch(value):
        raise PayloadError(f"payload field {'.'.join(path)} is not a commit sha")
    return value.lower()


def _id(data: Any, *path: str, required: bool = False) -> int | None:
    value = _opt(data, int, *path)
    if value is None and required:
        raise PayloadError(f"payload has no {'.'.join(path)}")
    if value is not None and not 0 < value <= MAX_ID:
        raise PayloadError(f"payload field {'.'.join(path)} is out of range")
    return value


def repository_full_name(payload: dict[str, Any]) -> str | None:
    value = _get(payload, "repository", "full_name")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Push:
    repo: str
    ref: str
    before: str
    after: str
    deleted: bool
    created: bool
    default_branch: str | None
    clone_url: str | None

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def is_tag(self) -> bool:
        return self.ref.startswith("refs/tags/")

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> Push:
        after = _sha(payload, "after")
        return cls(
            repo=_req_str(payload, "repository", "full_name"),
            ref=_req_str(payload, "ref"),
            before=_sha(payload, "before"),
            after=after,
            deleted=_flag(payload, "deleted") or after == ZERO_SHA,
            created=_flag(payload, "created"),
            default_branch=_opt(payload, str, "repository", "default_branch")
            or _opt(payload, str, "repository", "master_branch"),
            clone_url=_opt(payload, str, "repository", "clone_url"),
        )


@dataclass(frozen=True)
class PullRequest:
    action: str
    number: int
    repo: str
    head_ref: str
    head_sha: str
    head_repo: str | None  # None when the fork was deleted
    base_ref: str
    draft: bool
    merged: bool

    @property
    def is_fork(self) -> bool:
        return self.head_repo is None or self.head_repo.lower() != self.repo.lower()

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> PullRequest:
        pr = _get(payload, "pull_request")
        if not isinstance(pr, dict):
            raise PayloadError("payload has no pull_request")
        number = _id(payload, "number") or _id(pr, "number")
        if number is None:
            raise PayloadError("payload has no pull request number")
        head_repo = _get(pr, "head", "repo")
        if head_repo is not None and not isinstance(head_repo, dict):
            raise PayloadError("payload field pull_request.head.repo is not an object")
        head_sha = _req_str(pr, "head", "sha")
        if not _SHA.fullmatch(head_sha):
            raise PayloadError("payload field pull_request.head.sha is not a commit sha")
        return cls(
            action=_req_str(payload, "action"),
            number=number,
            repo=_req_str(payload, "repository", "full_name"),
            head_ref=_req_str(pr, "head", "ref").removeprefix("refs/heads/"),
            head_sha=head_sha.lower(),
            head_repo=_opt(head_repo, str, "full_name"),
            base_ref=_req_str(pr, "base", "ref"),
            draft=_flag(pr, "draft"),
            merged=_flag(pr, "merged"),
        )


@dataclass(frozen=True)
class RepoRef:
    full_name: str
    id: int | None = None


def _repos(payload: dict[str, Any], name: str) -> list[RepoRef]:
    items = _opt(payload, list, name) or []
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError(f"payload field {name} lists something that is not a repository")
        out.append(RepoRef(_req_str(item, "full_name"), _id(item, "id")))
    return out


@dataclass(frozen=True)
class InstallationChange:
    """``installation`` and ``installation_repositories`` in one shape."""

    event: str
    action: str
    installation_id: int
    account: str | None
    added: list[RepoRef] = field(default_factory=list)
    removed: list[RepoRef] = field(default_factory=list)

    @classmethod
    def parse(cls, event: str, payload: dict[str, Any]) -> InstallationChange:
        installation_id = _id(payload, "installation", "id", required=True)
        assert installation_id is not None
        action = _req_str(payload, "action")
        if event == "installation":
            repos = _repos(payload, "repositories")
            # suspend/unsuspend list no repositories: the installation's flag changes, and
            # each repository keeps its own access (see controller.routing.access).
            added = repos if action in ("created", "new_permissions_accepted") else []
            removed = repos if action == "deleted" else []
        else:
            added = _repos(payload, "repositories_added")
            removed = _repos(payload, "repositories_removed")
        return cls(
            event=event,
            action=action,
            installation_id=installation_id,
            account=_opt(payload, str, "installation", "account", "login"),
            added=added,
            removed=removed,
        )


@dataclass(frozen=True)
class DeletedRef:
    """A ``delete`` delivery: a branch or tag was deleted (``ref`` is the short name)."""

    repo: str
    ref: str
    ref_type: str  # branch | tag

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> DeletedRef:
        return cls(
            repo=_req_str(payload, "repository", "full_name"),
            ref=_req_str(payload, "ref").removeprefix("refs/heads/"),
            ref_type=_req_str(payload, "ref_type"),
        )


def _url(data: Any, *path: str) -> str | None:
    value = _get(data, *path)
    if not isinstance(value, str) or not value:
        return None
    if len(value) > 2000 or "\x00" in value:
        raise PayloadError(f"payload field {'.'.join(path)} is not a URL Slipway can store")
    return value


@dataclass(frozen=True)
class RepositorySource:
    """Where a delivery says its repository is fetched from, and through which App
    installation: ``repository.clone_url`` (http(s) only) and ``installation.id``."""

    full_name: str
    clone_url: str | None
    installation_id: int | None

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> RepositorySource | None:
        full_name = _opt(payload, str, "repository", "full_name")
        if full_name is None:
            return None
        clone_url = _url(payload, "repository", "clone_url")
        if clone_url is not None and not clone_url.startswith(("https://", "http://")):
            clone_url = None
        return cls(
            full_name=_checked_text(full_name, ("repository", "full_name")),
            clone_url=clone_url,
            installation_id=_id(payload, "installation", "id"),
        )


@dataclass(frozen=True)
class CommitSignal:
    """What a promotion gate reads from ``deployment_status`` and ``check_run``.

    ``name`` is the GitHub environment (deployment status) or the check's name; ``state``
    the deployment status's state, or the check's conclusion once completed (else its
    status); ``github_id`` the status's or check run's id; ``url`` the log URL (else the
    target or details URL).
    """

    kind: str  # deployment_status | check_run
    action: str
    repo: str
    sha: str
    name: str
    state: str
    github_id: int
    deployment_id: int | None
    url: str | None

    @classmethod
    def parse(cls, event: str, payload: dict[str, Any]) -> CommitSignal:
        repo = _req_str(payload, "repository", "full_name")
        action = _req_str(payload, "action")
        if event == "deployment_status":
            status = _get(payload, "deployment_status")
            deployment = _get(payload, "deployment")
            sha = _req_str(deployment, "sha")
            name = _opt(status, str, "environment") or _req_str(deployment, "environment")
            state = _req_str(status, "state")
            github_id = _id(status, "id", required=True)
            deployment_id = _id(deployment, "id", required=True)
            url = _url(status, "log_url") or _url(status, "target_url")
        else:
            run = _get(payload, "check_run")
            sha = _req_str(run, "head_sha")
            name = _req_str(run, "name")
            state = _opt(run, str, "conclusion") or _req_str(run, "status")
            github_id = _id(run, "id", required=True)
            deployment_id = None
            url = _url(run, "details_url") or _url(run, "html_url")
        if not _SHA.fullmatch(sha):
            raise PayloadError(f"payload of {event} has a commit that is not a sha")
        assert github_id is not None
        return cls(
            kind=event,
            action=action,
            repo=repo,
            sha=sha.lower(),
            name=name,
            state=state,
            github_id=github_id,
            deployment_id=deployment_id,
            url=url,
        )
