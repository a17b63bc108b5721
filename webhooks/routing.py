"""Event → intents: SPEC.md's table as pure functions (no I/O, no clock, no database).

:func:`route` takes the event name, the parsed payload and a snapshot of the projects
connected to the payload's repository, and returns what should happen and why. The
controller applies the intents in one transaction. Anything routing decides *not* to do
for a project comes back as a :class:`Skip` with a reason the user can read.

Decisions where SPEC.md is silent:

* Draft pull requests get no preview until ``ready_for_review`` (Vercel deploys drafts;
  we follow the SPEC's event list, which names ``ready_for_review`` as a trigger). A PR
  converted back to draft keeps its existing preview.
* A push to a branch configured as both production and staging deploys both.
* Fork detection compares ``head.repo.full_name`` with the base repository,
  case-insensitively; a deleted fork (``head.repo`` null) counts as a fork.
* The preview limit counts active preview branches; redeploying an existing one never
  counts against it.
* ``deployment_status`` and ``check_run`` are recorded (:class:`RecordSignal`) for a
  repository with a connected project, whatever the project's state: the promotion gate
  decides with them later. ``check_run`` is recorded when ``created`` or ``completed``;
  ``rerequested`` and ``requested_action`` carry no new result.
* ``installation`` ``suspend``/``unsuspend`` change the installation, not the list of its
  repositories (GitHub's payloads list none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from webhooks.events import (
    CommitSignal,
    DeletedRef,
    InstallationChange,
    PayloadError,
    PullRequest,
    Push,
)

PREVIEW_ACTIONS = frozenset({"opened", "reopened", "synchronize", "ready_for_review"})


@dataclass(frozen=True)
class ProjectView:
    """What routing needs to know about one project."""

    id: int
    ref: str
    repo: str
    production_branch: str | None = None
    staging_branch: str | None = None
    previews: bool = True
    fork_previews: bool = False
    preview_limit: int = 10
    active_previews: frozenset[str] = frozenset()
    deploying: bool = True  # False when disconnected or its repository is unreachable
    not_deploying_reason: str | None = None


@dataclass(frozen=True)
class Deploy:
    project_id: int
    environment: str  # production | staging | preview
    branch: str | None
    sha: str
    ref: str
    source: str  # push | pull_request
    pr_number: int | None = None
    head_repo: str | None = None
    is_fork: bool = False


@dataclass(frozen=True)
class Archive:
    project_id: int
    branch: str
    reason: str
    pr_number: int | None = None  # set: only a preview deployed for this pull request


@dataclass(frozen=True)
class Skip:
    project_id: int
    reason: str


@dataclass(frozen=True)
class AccessChange:
    change: InstallationChange


@dataclass(frozen=True)
class RecordSignal:
    signal: CommitSignal


Intent = Deploy | Archive | Skip | AccessChange | RecordSignal
SIGNAL_ACTIONS = {"deployment_status": {"created"}, "check_run": {"created", "completed"}}


@dataclass(frozen=True)
class Routed:
    intents: list[Intent] = field(default_factory=list)
    outcome: str = ""


def route(event: str, payload: dict[str, Any], projects: list[ProjectView]) -> Routed:
    """Decide what a delivery means. Raises :class:`PayloadError` for a malformed payload."""
    if event == "ping":
        return Routed(outcome="ping acknowledged")
    if event in ("installation", "installation_repositories"):
        change = InstallationChange.parse(event, payload)
        return Routed(
            [AccessChange(change)],
            f"{event}.{change.action}: +{len(change.added)} -{len(change.removed)} repositories",
        )
    if event == "push":
        return _route_push(Push.parse(payload), projects)
    if event == "pull_request":
        return _route_pull_request(PullRequest.parse(payload), projects)
    if event == "delete":
        return _route_delete(DeletedRef.parse(payload), projects)
    if event in SIGNAL_ACTIONS:
        return _route_signal(event, payload, projects)
    return Routed(outcome=f"ignored: Slipway does not act on '{event}' events")


def _no_projects(repo: str) -> Routed:
    return Routed(outcome=f"ignored: no project is connected to {repo}")


def _route_push(push: Push, projects: list[ProjectView]) -> Routed:
    if not projects:
        return _no_projects(push.repo)
    if push.is_tag:
        return Routed(outcome=f"ignored: tag push {push.ref}")
    branch = push.branch
    if branch is None:
        return Routed(outcome=f"ignored: push to {push.ref}")
    intents: list[Intent] = []
    if push.deleted:
        for project in projects:
            if branch in project.active_previews:
                intents.append(Archive(project.id, branch, f"branch {branch} was deleted"))
        return Routed(intents, f"branch {branch} deleted: {len(intents)} preview(s) archived")
    for project in projects:
        targets = []
        if branch == (project.production_branch or push.default_branch):
            targets.append("production")
        if project.staging_branch and branch == project.staging_branch:
            targets.append("staging")
        if targets and not project.deploying:
            intents.append(Skip(project.id, _not_deploying(project, push.after)))
            continue
        for env in targets:
            intents.append(Deploy(project.id, env, None, push.after, push.ref, "push"))
    if not intents:
        return Routed(outcome=f"ignored: {branch} is not a tracked branch")
    return Routed(intents, _summary(intents))


def _route_delete(deleted: DeletedRef, projects: list[ProjectView]) -> Routed:
    if not projects:
        return _no_projects(deleted.repo)
    if deleted.ref_type != "branch":
        return Routed(outcome=f"ignored: {deleted.ref_type} {deleted.ref} deleted")
    branch = deleted.ref
    intents: list[Intent] = [
        Archive(project.id, branch, f"branch {branch} was deleted")
        for project in projects
        if branch in project.active_previews
    ]
    return Routed(intents, f"branch {branch} deleted: {len(intents)} preview(s) archived")


def _route_signal(event: str, payload: dict[str, Any], projects: list[ProjectView]) -> Routed:
    signal = CommitSignal.parse(event, payload)
    if not projects:
        return _no_projects(signal.repo)
    if signal.action not in SIGNAL_ACTIONS[event]:
        return Routed(outcome=f"ignored: {event}.{signal.action}")
    return Routed(
        [RecordSignal(signal)],
        f"recorded {event} {signal.name!r} {signal.state} for {signal.sha[:7]}",
    )


def _route_pull_request(pr: PullRequest, projects: list[ProjectView]) -> Routed:
    if not projects:
        return _no_projects(pr.repo)
    intents: list[Intent] = []
    if pr.action == "closed":
        verb = "merged" if pr.merged else "closed"
        for project in projects:
            intents.append(
                Archive(project.id, pr.head_ref, f"pull request #{pr.number} was {verb}", pr.number)
            )
        return Routed(intents, f"pull request #{pr.number} {verb}: preview archived")
    if pr.action not in PREVIEW_ACTIONS:
        return Routed(outcome=f"ignored: pull_request.{pr.action}")
    for project in projects:
        reason = _preview_refusal(pr, project)
        if reason:
            intents.append(Skip(project.id, reason))
            continue
        intents.append(
            Deploy(
                project.id,
                "preview",
                pr.head_ref,
                pr.head_sha,
                f"refs/pull/{pr.number}/head",
                "pull_request",
                pr_number=pr.number,
                head_repo=pr.head_repo,
                is_fork=pr.is_fork,
            )
        )
    return Routed(intents, _summary(intents))


def _preview_refusal(pr: PullRequest, project: ProjectView) -> str | None:
    label = f"pull request #{pr.number} ({pr.head_ref})"
    if not project.deploying:
        return _not_deploying(project, pr.head_sha)
    if not project.previews:
        return (
            f"no preview for {label}: previews are off for project {project.ref} "
            f"(turn on with `slipway projects update {project.ref} --previews`)"
        )
    if pr.draft:
        return f"no preview for {label} yet: it is a draft; it deploys when marked ready for review"
    if pr.is_fork and not project.fork_previews:
        source = pr.head_repo or "a deleted fork"
        return (
            f"no preview for {label}: it comes from the fork {source} and fork previews are off "
            f"for project {project.ref} (`slipway projects update {project.ref} --fork-previews` "
            "allows them; forks never receive the project's secrets)"
        )
    if pr.head_ref not in project.active_previews and (
        len(project.active_previews) >= project.preview_limit
    ):
        return (
            f"no preview for {label}: project {project.ref} already has "
            f"{len(project.active_previews)} active preview branches (limit "
            f"{project.preview_limit}); archive one with `slipway preview archive` or raise "
            "the limit"
        )
    return None


def _not_deploying(project: ProjectView, sha: str) -> str:
    why = project.not_deploying_reason or "it is not deploying"
    return f"not deploying {sha[:7]} for project {project.ref}: {why}"


def _summary(intents: list[Intent]) -> str:
    parts = []
    for intent in intents:
        if isinstance(intent, Deploy):
            where = intent.environment + (f"/{intent.branch}" if intent.branch else "")
            parts.append(f"deploy {intent.sha[:7]} to {where}")
        elif isinstance(intent, Skip):
            parts.append("skipped: " + intent.reason)
    return "; ".join(parts)


__all__ = [
    "AccessChange",
    "Archive",
    "Deploy",
    "Intent",
    "PayloadError",
    "ProjectView",
    "RecordSignal",
    "Routed",
    "Skip",
    "route",
]
