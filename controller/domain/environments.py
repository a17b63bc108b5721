"""Environments: production, staging, and one preview per branch."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from controller.domain.events import record_event
from controller.errors import InvalidInput, NotFound
from controller.models import WAITING
from controller.queue import Queue
from controller.secretstore.crypto import Cipher, key_hash, new_secret_key
from controller.store.environments import environment_by_key, preview_by_branch
from controller.store.sql import one_of
from controller.store.tables import Deployment, Environment, Project, utcnow


def env_key(environment_id: int) -> str:
    """The queue key of an environment's deployments."""
    return f"env:{environment_id}"


def ensure_environment(
    session: Session,
    cipher: Cipher,
    *,
    project: Project,
    name: str,
    branch: str | None,
    **attrs: Any,
) -> Environment:
    env = environment_by_key(session, project.id, name, branch or "")
    if env is None:
        key = new_secret_key()
        env = Environment(
            project_id=project.id,
            name=name,
            branch=branch,
            branch_key=branch or "",
            secret_key_hash=key_hash(key),
            secret_key_encrypted=cipher.encrypt(key),
            **attrs,
        )
        session.add(env)
        session.flush()
    else:
        for attr, value in attrs.items():
            setattr(env, attr, value)
    return env


def find_environment(
    session: Session, project: Project, name: str, branch: str | None
) -> Environment:
    if name == "preview" and not branch:
        raise InvalidInput(
            "the preview environment needs a branch: pass --branch (API: x-slipway-branch)"
        )
    env = environment_by_key(session, project.id, name, (branch or "") if name == "preview" else "")
    if env is None:
        where = f"preview branch {branch!r}" if name == "preview" else f"environment {name!r}"
        raise NotFound(f"{where} does not exist in project {project.ref}")
    return env


def archive_branch(
    session: Session, project: Project, branch: str, reason: str
) -> Environment | None:
    env = preview_by_branch(session, project.id, branch)
    if env is None or env.status == "archived":
        return env
    env.status = "archived"
    env.status_reason = reason
    env.archived_at = utcnow()
    cancel_queued(session, env.id, f"preview branch archived: {reason}")
    record_event(session, project.id, "archived", f"preview branch {branch} archived: {reason}")
    return env


def cancel_queued(session: Session, environment_id: int, reason: str) -> list[str]:
    """Cancel the environment's queued deployments, and any waiting for its gate."""
    ids = Queue.cancel(session, key=env_key(environment_id))
    if ids:
        session.execute(
            update(Deployment)
            .where(one_of(Deployment.id, ids), Deployment.status == "queued")
            .values(status="canceled", error=reason, finished_at=utcnow())
        )
    session.execute(
        update(Deployment)
        .where(Deployment.environment_id == environment_id, Deployment.status == WAITING)
        .values(status="canceled", error=reason, finished_at=utcnow())
    )
    return ids
