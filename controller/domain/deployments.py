"""Deployments: request one (newest wins), record a collapsed one, and apply a deploy
intent, the one path a routed delivery and the resync share: a tracked-branch commit is
deployed to an environment at most once, whoever saw it first."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from controller.domain.environments import ensure_environment, env_key
from controller.domain.events import record_event
from controller.domain.projects import project_not_deploying_reason
from controller.errors import Conflict
from controller.ids import new_id
from controller.models import WAITING
from controller.queue import Queue
from controller.secretstore.crypto import Cipher
from controller.store.deployments import attempted_deployment, same_commit_in_progress
from controller.store.environments import lock_environment, preview_by_branch
from controller.store.sql import one_of
from controller.store.tables import Delivery, Deployment, Environment, Project, utcnow
from webhooks.routing import Deploy

# Intents that follow a tracked branch: a commit is deployed to an environment at most once
# (a late delivery after the resync deployed it, or the resync after the delivery).
TRACKED_SOURCES = frozenset({"push", "resync"})


@dataclass
class Applied:
    """What applying one delivery's (or one resync request's) intents did."""

    outcome: str
    archived_env_ids: list[int] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeployRequest:
    sha: str | None
    ref: str | None
    source: str
    options: dict[str, Any] | None = None
    delivery_id: str | None = None
    pr_number: int | None = None
    upload_path: str | None = None


def request_deployment(
    session: Session,
    *,
    project: Project,
    environment: Environment,
    request: DeployRequest,
    supersede: bool = True,
) -> Deployment:
    """Queue a deployment. Older queued deployments of the environment are superseded:
    the newest request wins (``supersede=False`` only when the caller just queued the
    one that starts first, in the same transaction)."""
    if environment.status == "archived":
        raise Conflict(
            f"preview branch {environment.branch!r} is archived; "
            "reopen the pull request to deploy it again"
        )
    reason = project_not_deploying_reason(session, project)
    if reason:
        raise Conflict(f"project {project.ref} is not deploying: {reason}")
    deployment = Deployment(
        id=new_id("dep"),
        project_id=project.id,
        environment_id=environment.id,
        sha=request.sha,
        ref=request.ref,
        source=request.source,
        options=request.options or {},
        delivery_id=request.delivery_id,
        pr_number=request.pr_number,
        upload_path=request.upload_path,
    )
    superseded = (
        Queue.supersede(session, key=env_key(environment.id), kind="deploy") if supersede else []
    )
    if superseded:
        session.execute(
            update(Deployment)
            .where(one_of(Deployment.id, superseded), Deployment.status == "queued")
            .values(
                status="superseded",
                error=f"superseded by {deployment.id}",
                finished_at=utcnow(),
            )
        )
    if supersede:
        # A newer request also replaces the one waiting for its promotion gate.
        session.execute(
            update(Deployment)
            .where(Deployment.environment_id == environment.id, Deployment.status == WAITING)
            .values(
                status="superseded",
                error=f"superseded by {deployment.id} while waiting for its promotion gate",
                finished_at=utcnow(),
            )
        )
    session.add(deployment)
    session.flush()
    Queue.add(session, kind="deploy", key=env_key(environment.id), deployment_id=deployment.id)
    return deployment


def record_superseded(
    session: Session,
    *,
    project: Project,
    environment: Environment,
    request: DeployRequest,
    winner: str,
    created_at: datetime,
) -> Deployment:
    """Record a request that a newer one already replaced (a collapsed push): it never
    queues, and says which deployment won."""
    now = utcnow()
    deployment = Deployment(
        id=new_id("dep"),
        project_id=project.id,
        environment_id=environment.id,
        sha=request.sha,
        ref=request.ref,
        source=request.source,
        status="superseded",
        error=f"superseded by {winner}",
        options=request.options or {},
        delivery_id=request.delivery_id,
        pr_number=request.pr_number,
        created_at=created_at,
        finished_at=now,
    )
    session.add(deployment)
    return deployment


def apply_deploy(
    session: Session,
    cipher: Cipher,
    project: Project,
    intent: Deploy,
    delivery: Delivery | None,
    applied: Applied,
    *,
    supersede: bool = True,
) -> None:
    """Apply one deploy intent: a routed delivery's (``delivery`` set) or the resync's
    (``delivery`` None; :mod:`controller.reconcile`). A tracked-branch commit that the
    environment already attempted is not requested again, whoever saw it first."""
    delivery_id = delivery.delivery_id if delivery is not None else None
    attrs: dict[str, object] = {}
    if intent.environment == "preview":
        holder = (
            preview_by_branch(session, project.id, intent.branch)
            if intent.branch is not None
            else None
        )
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
                delivery_id,
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
    revived = env.status == "archived" and intent.source == "pull_request"
    if revived:
        # A reopened pull request (or a new one from the same branch) revives its preview.
        env.status, env.status_reason, env.archived_at = "active", None, None
    elif intent.source == "pull_request" and env.id is not None:
        # The resync reads open pull requests too: a delivery that arrives after the resync
        # requested its commit (or a repeated event) must not supersede that deployment
        # with an identical one. A commit whose deployment failed may be asked for again.
        lock_environment(session, env.id)
        live = same_commit_in_progress(session, env.id, intent.sha)
        if live is not None:
            record_event(
                session,
                project.id,
                "skipped",
                f"{intent.sha[:7]} is already {live.status} in {env.name} ({live.id})",
                delivery_id,
            )
            return
    if intent.source in TRACKED_SOURCES:
        # The resync and routing (or two replicas) check-then-insert under the
        # environment's row lock.
        lock_environment(session, env.id)
        earlier = attempted_deployment(session, env.id, intent.sha)
        if earlier is not None:
            if delivery is not None:
                record_event(
                    session,
                    project.id,
                    "skipped",
                    f"{intent.sha[:7]} was already attempted in {env.name} ({earlier.id}, "
                    f"{earlier.status}); a commit deploys once per environment",
                    delivery_id,
                )
            return
    try:
        deployment = request_deployment(
            session,
            project=project,
            environment=env,
            request=DeployRequest(
                sha=intent.sha,
                ref=intent.ref,
                source=intent.source,
                delivery_id=delivery_id,
                pr_number=intent.pr_number,
                options={"fork": intent.is_fork} if intent.is_fork else {},
            ),
            supersede=supersede,
        )
    except Conflict as exc:
        record_event(session, project.id, "skipped", exc.message, delivery_id)
        return
    applied.deployments.append(deployment.id)
