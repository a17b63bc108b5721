"""One comment per pull request: found again by a hidden marker, edited in place.

Part of the reporter (:mod:`controller.github.reporting`): each pass renders the body
every pull request's comment should have now (its preview branch, newest deployment,
version, status and links; "archived" once archived; for a fork PR that got no preview,
why) and compares its hash with ``github_comments``; only a changed body is sent.
Before creating, the PR's comments are searched for the project's marker, so a crash
between the create and its record edits that comment instead of adding a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from controller.errors import PermanentError
from controller.github.client import GitHubClient
from controller.github.render import (
    MARKER,
    DeploymentView,
    PreviewView,
    body_hash,
    comment_body,
)
from controller.store.db import Database
from controller.store.reports import (
    comment_of_pull_request,
    comments_by_pull_request,
    fork_refusals,
    newest_deployment_with_commit,
    previews_to_comment,
    version_of_deployment,
)
from controller.store.tables import (
    Deployment,
    Environment,
    GitHubComment,
    Project,
    Repository,
    utcnow,
)

log = logging.getLogger(__name__)

LOOKBACK = timedelta(days=1)
PAGES = 10


@dataclass(frozen=True)
class CommentTarget:
    repo: str
    installation_id: int
    project_id: int
    preview: PreviewView
    sent_hash: str | None
    comment_id: int | None


def deployment_view(
    dep: Deployment, env: Environment, project: Project, repo: Repository, **details: Any
) -> DeploymentView:
    """What the reporter and the comments render of a deployment (with a commit) to an
    installed repository; ``details`` are the further :class:`DeploymentView` fields."""
    assert dep.sha is not None and repo.installation_id is not None
    return DeploymentView(
        id=dep.id,
        project_ref=project.ref,
        repo=repo.full_name,
        installation_id=repo.installation_id,
        sha=dep.sha,
        status=dep.status,
        environment=env.name,
        branch=env.branch,
        env_archived=env.status == "archived",
        **details,
    )


def _target(
    repo: Repository, project: Project, preview: PreviewView, comment: GitHubComment | None
) -> CommentTarget:
    assert repo.installation_id is not None
    return CommentTarget(
        repo.full_name,
        repo.installation_id,
        project.id,
        preview,
        comment.body_hash if comment else None,
        comment.comment_id if comment else None,
    )


class Comments:
    def __init__(self, *, db: Database, public_url: str) -> None:
        self.db = db
        self.public_url = public_url

    def load(self) -> list[CommentTarget]:
        """(repo, installation, project id, preview, last body hash, comment id) for
        every pull request with a preview (or a fork refusal) seen within the lookback."""
        since = utcnow() - LOOKBACK
        out = []
        with self.db.read() as session:
            comments = comments_by_pull_request(session)
            for env, project, repo in previews_to_comment(session, since=since):
                assert env.pr_number is not None
                dep = newest_deployment_with_commit(session, env.id)
                view = None
                if dep is not None:
                    version = version_of_deployment(session, dep.id)
                    view = deployment_view(
                        dep, env, project, repo, version=version.version if version else None
                    )
                preview = PreviewView(
                    project.ref, env.pr_number, env.branch, env.status == "archived", view
                )
                out.append(
                    _target(repo, project, preview, comments.get((project.id, env.pr_number)))
                )
            seen = {(t.project_id, t.preview.pr_number) for t in out}
            out += self._fork_refusals(session, since, comments, seen=seen)
        return out

    def _fork_refusals(
        self, session: Any, since: Any, comments: dict[Any, GitHubComment], *, seen: set[Any]
    ) -> list[CommentTarget]:
        out: dict[Any, CommentTarget] = {}
        for event, project, repo in fork_refusals(session, since=since):
            number_text = event.message.removeprefix("no preview for pull request #").split()[0]
            if not number_text.isdigit() or (project.id, int(number_text)) in seen:
                continue
            number = int(number_text)
            refusal = event.message.split(": ", 1)[-1]
            preview = PreviewView(project.ref, number, None, False, None, refusal=refusal)
            out[(project.id, number)] = _target(
                repo, project, preview, comments.get((project.id, number))
            )
        return list(out.values())

    def reconcile(self, client: GitHubClient, target: CommentTarget) -> None:
        repo, installation_id, preview = target.repo, target.installation_id, target.preview
        project_id, comment_id = target.project_id, target.comment_id
        body = comment_body(self.public_url, preview)
        digest = body_hash(body)
        if digest == target.sent_hash:
            return
        number = preview.pr_number
        try:
            if comment_id is None:
                comment_id = self.find_comment(client, repo, installation_id, preview)
            if comment_id is None:
                created = client.request(
                    installation_id,
                    "POST",
                    f"/repos/{repo}/issues/{number}/comments",
                    body={"body": body},
                )
                self.record_comment(
                    project_id, number, comment_id=int(created.data["id"]), body_hash=digest
                )
                return
            self.record_comment(project_id, number, comment_id=comment_id)
            client.request(
                installation_id,
                "PATCH",
                f"/repos/{repo}/issues/comments/{comment_id}",
                body={"body": body},
            )
            self.record_comment(project_id, number, body_hash=digest)
        except PermanentError as exc:
            log.warning("GitHub refused the comment on %s#%s: %s", repo, number, exc)
            self.record_comment(project_id, number, body_hash=digest)

    def find_comment(
        self, client: GitHubClient, repo: str, installation_id: int, preview: PreviewView
    ) -> int | None:
        marker = MARKER.format(ref=preview.project_ref)
        for page in range(1, PAGES + 1):
            found = client.request(
                installation_id,
                "GET",
                f"/repos/{repo}/issues/{preview.pr_number}/comments",
                params={"per_page": 100, "page": page},
            )
            batch = found.data or []
            for comment in batch:
                if marker in (comment.get("body") or ""):
                    return int(comment["id"])
            if len(batch) < 100:
                break
        return None

    def record_comment(self, project_id: int, pr_number: int, **values: Any) -> None:
        with self.db.transaction() as session:
            row = comment_of_pull_request(session, project_id, pr_number)
            if row is None:
                row = GitHubComment(project_id=project_id, pr_number=pr_number)
                session.add(row)
            for name, value in values.items():
                setattr(row, name, value)
