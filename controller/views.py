"""Rows → the JSON shapes SPEC.md fixes. The API and the pages both read through here."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.orm import Session

from controller.models import environment_type
from controller.store.environments import environments_by_id
from controller.store.projects import project_refs
from controller.store.tables import (
    Deployment,
    Environment,
    Event,
    Project,
    Run,
    Version,
)
from controller.store.versions import version_names


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def redact_url(url: str | None) -> str | None:
    """Hide credentials a clone URL may carry (``https://user:token@host/...``)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"***@{host}"))
    return url


def project_view(project: Project, *, not_deploying: str | None = None) -> dict[str, Any]:
    return {
        "ref": project.ref,
        "repo": project.repo,
        "clone_url": redact_url(project.clone_url),
        "production_branch": project.production_branch,
        "staging_branch": project.staging_branch,
        "previews": project.previews,
        "fork_previews": project.fork_previews,
        "preview_limit": project.preview_limit,
        "config_path": project.config_path,
        "install_command": project.install_command,
        "pre_build_command": project.pre_build_command,
        "promotion_gates": dict(project.promotion_gates or {}),
        "promotion_timeout": project.promotion_timeout,
        "status": "disconnected" if project.disconnected_at else "connected",
        "deploying": not_deploying is None,
        "not_deploying_reason": not_deploying,
        "created_at": iso(project.created_at),
    }


def version_strings(session: Session, ids: set[int | None]) -> dict[int, str]:
    return version_names(session, {i for i in ids if i})


def environment_view(env: Environment, current_version: str | None) -> dict[str, Any]:
    return {
        "id": env.id,
        "name": env.name,
        "type": environment_type(env.name, env.branch),
        "branch": env.branch,
        "status": env.status,
        "status_reason": env.status_reason,
        "current_version": current_version,
        "pull_request": env.pr_number,
        "fork": env.is_fork,
        "created_at": iso(env.created_at),
        "archived_at": iso(env.archived_at),
    }


def deployment_view(
    dep: Deployment, *, project_ref: str, env: Environment, version: str | None
) -> dict[str, Any]:
    return {
        "id": dep.id,
        "project": project_ref,
        "environment": env.name,
        "branch": env.branch,
        "sha": dep.sha,
        "ref": dep.ref,
        "status": dep.status,
        "version": version,
        "error": dep.error,
        "source": dep.source,
        "pull_request": dep.pr_number,
        "delivery": dep.delivery_id,
        "options": dep.options or {},
        "artifact_digest": dep.artifact_digest,
        "gate": dep.gate,
        "waiting_since": iso(dep.waiting_since),
        "gate_deadline": iso(dep.gate_deadline),
        "created_at": iso(dep.created_at),
        "started_at": iso(dep.started_at),
        "finished_at": iso(dep.finished_at),
    }


def deployments_view(session: Session, rows: list[Deployment]) -> list[dict[str, Any]]:
    envs = environments_by_id(session, {d.environment_id for d in rows})
    refs = project_refs(session, {d.project_id for d in rows})
    versions = version_strings(session, {d.version_id for d in rows})
    return [
        deployment_view(
            d,
            project_ref=refs[d.project_id],
            env=envs[d.environment_id],
            version=versions.get(d.version_id or 0),
        )
        for d in rows
    ]


def version_view(v: Version, env: Environment, *, current: bool) -> dict[str, Any]:
    return {
        "version": v.version,
        "environment": env.name,
        "branch": env.branch,
        "sha": v.sha,
        "tasks": v.tasks,
        "deployment": v.deployment_id,
        "artifact_digest": v.artifact_digest,
        "current": current,
        "created_at": iso(v.created_at),
        "promoted_at": iso(v.promoted_at),
    }


def run_view(run: Run, version: str | None, *, with_logs: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": run.id,
        "task_id": run.task_id,
        "status": run.status,
        "output": run.output,
        "error": run.error,
        "version": version,
        "payload": run.payload,
        "created_at": iso(run.created_at),
        "finished_at": iso(run.finished_at),
        "duration_ms": run.duration_ms,
    }
    if with_logs:
        out["logs"] = run.logs
    return out


def event_view(event: Event) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "message": event.message,
        "delivery": event.delivery_id,
        "created_at": iso(event.created_at),
    }
