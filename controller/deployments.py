"""Domain operations on projects, environments and deployments, inside a caller's
transaction. The webhook dispatcher, the API and the resync all go through these, so the
rules (newest wins, archived branches take no work, disconnected projects stop deploying)
live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from controller.errors import Conflict, InvalidInput, NotFound
from controller.gates.spec import merge_gates, parse_duration
from controller.ids import new_id
from controller.models import ACTIVE_STATUSES, BRANCH_PATTERN, REF_PATTERN, WAITING
from controller.queue import Queue
from controller.secretstore.crypto import Cipher, key_hash, new_secret_key
from controller.store.tables import (
    Deployment,
    Environment,
    Event,
    Installation,
    Job,
    Project,
    Repository,
    utcnow,
)

PROJECT_FIELDS = (
    "repo",
    "clone_url",
    "production_branch",
    "staging_branch",
    "previews",
    "fork_previews",
    "preview_limit",
    "config_path",
    "install_command",
    "pre_build_command",
    "promotion_gates",
    "promotion_timeout",
)


def env_key(environment_id: int) -> str:
    """The queue key of an environment's deployments."""
    return f"env:{environment_id}"


# -- projects --------------------------------------------------------------------------


def get_project(session: Session, ref: str) -> Project:
    project = session.execute(select(Project).where(Project.ref == ref)).scalar_one_or_none()
    if project is None:
        raise NotFound(f"project {ref!r} does not exist", hint="see `slipway projects list`")
    return project


def _validate_project(values: dict[str, Any]) -> None:
    repo = values.get("repo")
    if repo is not None and (repo.count("/") != 1 or not all(repo.split("/"))):
        raise InvalidInput(f"--repo must look like OWNER/NAME, not {repo!r}")
    for name in ("production_branch", "staging_branch"):
        branch = values.get(name)
        if branch is not None and not BRANCH_PATTERN.match(branch):
            raise InvalidInput(f"{name} {branch!r} is not a valid branch name")
    limit = values.get("preview_limit")
    if limit is not None and not 0 <= int(limit) <= 1000:
        raise InvalidInput("preview_limit must be between 0 and 1000")
    config = values.get("config_path")
    if config is not None and (config.startswith("/") or ".." in config.split("/")):
        raise InvalidInput("config_path must be a relative path inside the repository")


def _normalise_gates(current: dict[str, Any] | None, values: dict[str, Any]) -> None:
    """Gate changes merge into the current gates (``ENV: none`` removes one); a timeout
    may be given as a duration (``30m``)."""
    if values.get("promotion_gates") is not None:
        values["promotion_gates"] = merge_gates(current, values["promotion_gates"])
    if values.get("promotion_timeout") is not None:
        values["promotion_timeout"] = parse_duration(values["promotion_timeout"])


def create_project(session: Session, cipher: Cipher, *, ref: str, **values: Any) -> Project:
    if not REF_PATTERN.match(ref):
        raise InvalidInput(
            f"project ref {ref!r} must be lowercase letters, digits and dashes (max 63)"
        )
    unknown = set(values) - set(PROJECT_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown project fields: {', '.join(sorted(unknown))}")
    if not values.get("repo"):
        raise InvalidInput("a project needs --repo OWNER/NAME")
    _validate_project(values)
    _normalise_gates(None, values)
    existing = session.execute(select(Project).where(Project.ref == ref)).scalar_one_or_none()
    if existing is not None:
        raise Conflict(f"project {ref!r} already exists")
    fields = {k: v for k, v in values.items() if v is not None}
    project = Project(ref=ref, repo_lower=values["repo"].lower(), **fields)
    session.add(project)
    session.flush()
    for name in ("production", "staging", "preview"):
        ensure_environment(session, cipher, project=project, name=name, branch=None)
    return project


def update_project(session: Session, project: Project, **values: Any) -> Project:
    unknown = set(values) - set(PROJECT_FIELDS) - {"connected"}
    if unknown:
        raise InvalidInput(f"unknown project fields: {', '.join(sorted(unknown))}")
    _validate_project(values)
    _normalise_gates(project.promotion_gates, values)
    connected = values.pop("connected", None)
    for name, value in values.items():
        setattr(project, name, value)
        if name == "repo":
            project.repo_lower = value.lower()
    if connected is True:
        project.disconnected_at = None
    elif connected is False and project.disconnected_at is None:
        disconnect_project(session, project)
    project.updated_at = utcnow()
    return project


def disconnect_project(session: Session, project: Project) -> list[str]:
    """Stop deploying; keep every record. Queued work is canceled."""
    project.disconnected_at = project.disconnected_at or utcnow()
    canceled: list[str] = []
    envs = session.execute(select(Environment.id).where(Environment.project_id == project.id))
    for (env_id,) in envs:
        canceled += cancel_queued(session, env_id, "the project was disconnected")
    record_event(session, project.id, "disconnected", "project disconnected; data is kept")
    return canceled


def project_not_deploying_reason(session: Session, project: Project) -> str | None:
    if project.disconnected_at is not None:
        return "the project is disconnected (`slipway projects update REF --connect`)"
    repo = session.execute(
        select(Repository).where(Repository.full_name_lower == project.repo_lower)
    ).scalar_one_or_none()
    if repo is not None and not repo.reachable:
        return (
            f"the GitHub App can no longer reach {project.repo} (it was removed from the "
            "installation, or the installation was suspended or deleted)"
        )
    installation = (
        session.get(Installation, repo.installation_id)
        if repo is not None and repo.installation_id is not None
        else None
    )
    if installation is not None and installation.suspended:
        return (
            f"the GitHub App's installation on {installation.account or installation.id} is "
            f"suspended, so it cannot reach {project.repo}"
        )
    return None


# -- environments ----------------------------------------------------------------------


def ensure_environment(
    session: Session,
    cipher: Cipher,
    *,
    project: Project,
    name: str,
    branch: str | None,
    **attrs: Any,
) -> Environment:
    env = session.execute(
        select(Environment).where(
            Environment.project_id == project.id,
            Environment.name == name,
            Environment.branch_key == (branch or ""),
        )
    ).scalar_one_or_none()
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
    env = session.execute(
        select(Environment).where(
            Environment.project_id == project.id,
            Environment.name == name,
            Environment.branch_key == ((branch or "") if name == "preview" else ""),
        )
    ).scalar_one_or_none()
    if env is None:
        where = f"preview branch {branch!r}" if name == "preview" else f"environment {name!r}"
        raise NotFound(f"{where} does not exist in project {project.ref}")
    return env


def active_previews(session: Session, project_id: int) -> frozenset[str]:
    rows = session.execute(
        select(Environment.branch).where(
            Environment.project_id == project_id,
            Environment.name == "preview",
            Environment.branch.is_not(None),
            Environment.status == "active",
        )
    )
    return frozenset(b for (b,) in rows if b)


def archive_branch(
    session: Session, project: Project, branch: str, reason: str
) -> Environment | None:
    env = session.execute(
        select(Environment).where(
            Environment.project_id == project.id,
            Environment.name == "preview",
            Environment.branch_key == branch,
        )
    ).scalar_one_or_none()
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
            .where(Deployment.id.in_(ids), Deployment.status == "queued")
            .values(status="canceled", error=reason, finished_at=utcnow())
        )
    session.execute(
        update(Deployment)
        .where(Deployment.environment_id == environment_id, Deployment.status == WAITING)
        .values(status="canceled", error=reason, finished_at=utcnow())
    )
    return ids


# -- deployments -----------------------------------------------------------------------


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
            .where(Deployment.id.in_(superseded), Deployment.status == "queued")
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


def active_deployment_count(session: Session, environment_id: int) -> int:
    return session.execute(
        select(func.count()).where(
            Deployment.environment_id == environment_id,
            Deployment.status.in_(ACTIVE_STATUSES),
        )
    ).scalar_one()


def attempted_deployment(session: Session, environment_id: int, sha: str) -> Deployment | None:
    """The oldest deployment of commit ``sha`` to the environment, in any status."""
    return session.execute(
        select(Deployment)
        .where(Deployment.environment_id == environment_id, Deployment.sha == sha)
        .order_by(Deployment.created_at)
        .limit(1)
    ).scalar_one_or_none()


def orphaned_queued_deployments(session: Session) -> list[Deployment]:
    """Queued deployments with no live job (their job was lost or failed): resync fodder."""
    live = select(Job.deployment_id).where(
        Job.deployment_id.is_not(None), Job.status.in_(("queued", "running"))
    )
    return list(
        session.execute(
            select(Deployment).where(
                Deployment.status.in_(ACTIVE_STATUSES), Deployment.id.not_in(live)
            )
        ).scalars()
    )


def record_event(
    session: Session, project_id: int, kind: str, message: str, delivery_id: str | None = None
) -> None:
    session.add(Event(project_id=project_id, kind=kind, message=message, delivery_id=delivery_id))
