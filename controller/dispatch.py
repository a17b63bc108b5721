"""Turn a recorded delivery into work: load → route (pure) → apply, in one transaction.

The delivery row carries ``processed_at``; it is set in the same transaction that applies
the intents, so a routing job that runs twice (its worker died after committing, before
acking) finds the delivery processed and does nothing the second time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.deployments import (
    DeployRequest,
    active_previews,
    archive_branch,
    cancel_queued,
    ensure_environment,
    project_not_deploying_reason,
    record_event,
    request_deployment,
)
from controller.errors import Conflict
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.tables import (
    Delivery,
    Environment,
    Installation,
    Project,
    Repository,
    utcnow,
)
from webhooks.events import InstallationChange, PayloadError, repository_full_name
from webhooks.routing import (
    AccessChange,
    Archive,
    Deploy,
    ProjectView,
    Skip,
    route,
)

log = logging.getLogger(__name__)


@dataclass
class Applied:
    outcome: str
    archived_env_ids: list[int] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)


def project_views(
    session: Session, repo: str | None
) -> tuple[list[ProjectView], dict[int, Project]]:
    if not repo:
        return [], {}
    projects = session.execute(
        select(Project).where(Project.repo_lower == repo.lower()).order_by(Project.id)
    ).scalars()
    views, by_id = [], {}
    for project in projects:
        reason = project_not_deploying_reason(session, project)
        by_id[project.id] = project
        views.append(
            ProjectView(
                id=project.id,
                ref=project.ref,
                repo=project.repo,
                production_branch=project.production_branch,
                staging_branch=project.staging_branch,
                previews=project.previews,
                fork_previews=project.fork_previews,
                preview_limit=project.preview_limit,
                active_previews=active_previews(session, project.id),
                deploying=reason is None,
                not_deploying_reason=reason,
            )
        )
    return views, by_id


def process_delivery(db: Database, cipher: Cipher, delivery_pk: int) -> Applied | None:
    """Apply one delivery exactly once. Returns None if it was already processed."""
    with db.transaction() as session:
        delivery = session.get(Delivery, delivery_pk)
        if delivery is None or delivery.processed_at is not None:
            return None
        try:
            payload = json.loads(delivery.body)
            views, projects = project_views(session, repository_full_name(payload))
            routed = route(delivery.event, payload, views)
        except (PayloadError, ValueError) as exc:
            delivery.processed_at = utcnow()
            delivery.outcome = f"rejected: {exc}"
            return Applied(delivery.outcome)
        applied = Applied(routed.outcome)
        for intent in routed.intents:
            if isinstance(intent, Deploy):
                _apply_deploy(
                    session, cipher, projects[intent.project_id], intent, delivery, applied
                )
            elif isinstance(intent, Archive):
                if _owned_by_another_pull_request(session, intent):
                    continue
                env = archive_branch(
                    session, projects[intent.project_id], intent.branch, intent.reason
                )
                if env is not None:
                    applied.archived_env_ids.append(env.id)
            elif isinstance(intent, Skip):
                record_event(
                    session, intent.project_id, "skipped", intent.reason, delivery.delivery_id
                )
            elif isinstance(intent, AccessChange):
                _apply_access(session, intent.change)
        delivery.processed_at = utcnow()
        delivery.outcome = applied.outcome[:4000]
        return applied


def _owned_by_another_pull_request(session: Session, intent: Archive) -> bool:
    """A closed pull request archives only its own preview, not another pull request's
    preview of the same branch name (e.g. an outsider's fork PR from a branch named
    like ours)."""
    if intent.pr_number is None:
        return False
    owner = session.execute(
        select(Environment.pr_number).where(
            Environment.project_id == intent.project_id,
            Environment.name == "preview",
            Environment.branch_key == intent.branch,
        )
    ).scalar_one_or_none()
    return owner is not None and owner != intent.pr_number


def _apply_deploy(
    session: Session,
    cipher: Cipher,
    project: Project,
    intent: Deploy,
    delivery: Delivery,
    applied: Applied,
) -> None:
    attrs: dict[str, object] = {}
    if intent.environment == "preview":
        holder = session.execute(
            select(Environment).where(
                Environment.project_id == project.id,
                Environment.name == "preview",
                Environment.branch_key == intent.branch,
            )
        ).scalar_one_or_none()
        if (
            holder is not None
            and holder.status == "active"
            and holder.pr_number is not None
            and holder.pr_number != intent.pr_number
        ):
            record_event(
                session,
                project.id,
                "skipped",
                f"no preview for pull request #{intent.pr_number}: preview branch "
                f"{intent.branch} belongs to pull request #{holder.pr_number}, which is still "
                "open; rename the branch or close the other pull request",
                delivery.delivery_id,
            )
            return
        attrs = {
            "pr_number": intent.pr_number,
            "head_repo": intent.head_repo,
            "is_fork": intent.is_fork,
        }
    env = ensure_environment(
        session, cipher, project=project, name=intent.environment, branch=intent.branch, **attrs
    )
    if env.status == "archived" and intent.source == "pull_request":
        # A reopened pull request (or a new one from the same branch) revives its preview.
        env.status, env.status_reason, env.archived_at = "active", None, None
    try:
        deployment = request_deployment(
            session,
            project=project,
            environment=env,
            request=DeployRequest(
                sha=intent.sha,
                ref=intent.ref,
                source=intent.source,
                delivery_id=delivery.delivery_id,
                pr_number=intent.pr_number,
                options={"fork": intent.is_fork} if intent.is_fork else {},
            ),
        )
    except Conflict as exc:
        record_event(session, project.id, "skipped", exc.message, delivery.delivery_id)
        return
    applied.deployments.append(deployment.id)


def _apply_access(session: Session, change: InstallationChange) -> None:
    installation = session.get(Installation, change.installation_id)
    if installation is None:
        installation = Installation(id=change.installation_id, account=change.account)
        session.add(installation)
    if change.event == "installation":
        installation.deleted = change.action == "deleted"
        if change.action in ("suspend", "unsuspend"):
            installation.suspended = change.action == "suspend"
    reachable = {r.full_name.lower(): r for r in change.added}
    gone = {r.full_name.lower(): r for r in change.removed}
    if change.event == "installation" and change.action in ("deleted", "suspend"):
        # GitHub may omit the list; every repository of the installation is gone.
        for repo in session.execute(
            select(Repository).where(Repository.installation_id == change.installation_id)
        ).scalars():
            repo.reachable = False
    for lower, ref in [*((k, v) for k, v in reachable.items()), *((k, v) for k, v in gone.items())]:
        found = session.execute(
            select(Repository).where(Repository.full_name_lower == lower)
        ).scalar_one_or_none()
        if found is None:
            found = Repository(full_name=ref.full_name, full_name_lower=lower)
            session.add(found)
        repo = found
        repo.github_id = ref.id or repo.github_id
        repo.installation_id = change.installation_id
        repo.reachable = lower in reachable
        session.flush()
        for project in session.execute(
            select(Project).where(Project.repo_lower == lower)
        ).scalars():
            if lower in gone:
                for (env_id,) in session.execute(
                    select(Environment.id).where(Environment.project_id == project.id)
                ):
                    cancel_queued(session, env_id, f"{ref.full_name} is no longer reachable")
                record_event(
                    session,
                    project.id,
                    "access",
                    f"the GitHub App lost access to {ref.full_name}; deployments stop (data kept)",
                )
            else:
                record_event(
                    session, project.id, "access", f"the GitHub App can reach {ref.full_name}"
                )
