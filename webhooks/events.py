"""Typed views of the webhook payload fields Slipway uses.

Only what routing needs is read, defensively: GitHub adds fields freely, and a missing
optional field must not turn a delivery into an exception. Parsing is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ZERO_SHA = "0" * 40


class PayloadError(ValueError):
    """The payload lacks a field this event must have."""


def _get(data: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(data, dict):
            return None
        data = data.get(name)
    return data


def _req_str(data: Any, *path: str) -> str:
    value = _get(data, *path)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"payload has no {'.'.join(path)}")
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
        after = _get(payload, "after") or ZERO_SHA
        return cls(
            repo=_req_str(payload, "repository", "full_name"),
            ref=_req_str(payload, "ref"),
            before=_get(payload, "before") or ZERO_SHA,
            after=after,
            deleted=bool(_get(payload, "deleted")) or after == ZERO_SHA,
            created=bool(_get(payload, "created")),
            default_branch=_get(payload, "repository", "default_branch")
            or _get(payload, "repository", "master_branch"),
            clone_url=_get(payload, "repository", "clone_url"),
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
        number = _get(payload, "number") or pr.get("number")
        if not isinstance(number, int):
            raise PayloadError("payload has no pull request number")
        head_repo = _get(pr, "head", "repo", "full_name")
        return cls(
            action=_req_str(payload, "action"),
            number=number,
            repo=_req_str(payload, "repository", "full_name"),
            head_ref=_req_str(pr, "head", "ref").removeprefix("refs/heads/"),
            head_sha=_req_str(pr, "head", "sha"),
            head_repo=head_repo if isinstance(head_repo, str) else None,
            base_ref=_req_str(pr, "base", "ref"),
            draft=bool(pr.get("draft")),
            merged=bool(pr.get("merged")),
        )


@dataclass(frozen=True)
class RepoRef:
    full_name: str
    id: int | None = None


def _repos(items: Any) -> list[RepoRef]:
    out = []
    for item in items or []:
        if isinstance(item, dict) and isinstance(item.get("full_name"), str):
            rid = item.get("id")
            out.append(RepoRef(item["full_name"], rid if isinstance(rid, int) else None))
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
        installation_id = _get(payload, "installation", "id")
        if not isinstance(installation_id, int):
            raise PayloadError("payload has no installation.id")
        action = _req_str(payload, "action")
        if event == "installation":
            repos = _repos(payload.get("repositories"))
            added = repos if action in ("created", "new_permissions_accepted", "unsuspend") else []
            removed = repos if action in ("deleted", "suspend") else []
        else:
            added = _repos(payload.get("repositories_added"))
            removed = _repos(payload.get("repositories_removed"))
        return cls(
            event=event,
            action=action,
            installation_id=installation_id,
            account=_get(payload, "installation", "account", "login"),
            added=added,
            removed=removed,
        )
