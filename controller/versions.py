"""Versions: numbering, promotion, rollback — the rules in one place.

A version is ``YYYYMMDD.N``: the UTC day, and N counting from 1 per environment (each
preview branch is an environment of its own) per day. Numbering is safe under races: the
``(environment, day, seq)`` unique constraint decides, and a loser takes the next number.
A version belongs to exactly one deployment (unique), so a resumed deployment finds the
version it already numbered instead of making a second one.

Promotion is one UPDATE of ``environments.current_version_id`` after the new version's
worker passed its health check; the old version's worker is then retired gracefully.
Promoting the version of a deployment waiting for its promotion gate (``manual``, or by
hand before the gate decided) ends that deployment ``deployed`` in the same transaction.

Both take a ``record`` callback that runs inside their transaction: the deploy pipeline
writes its journal step's end there, so a version is numbered (or promoted) and its step
recorded as done in one commit — a controller killed in between cannot happen.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.errors import Conflict, InvalidInput, NotFound
from controller.runtimes.base import ArtifactRef, Runtime, VersionSpec
from controller.store.db import Database
from controller.store.tables import Deployment, Environment, Project, Version, utcnow
from controller.store.versions import (
    deployed_version_before,
    last_version_seq,
    version_by_name,
    version_of_deployment,
)


def allocate_version(
    db: Database,
    *,
    deployment: Deployment,
    sha: str | None,
    tasks: list[dict[str, Any]],
    artifact_digest: str | None,
    source_path: str,
    venv_path: str,
    tasks_dir: str,
    release_tasks: list[str],
    now: datetime | None = None,
    record: Callable[[Session, Version], None] | None = None,
) -> Version:
    day = (now or datetime.now(UTC)).strftime("%Y%m%d")
    for _ in range(50):
        try:
            with db.transaction() as session:
                existing = version_of_deployment(session, deployment.id)
                if existing is not None:
                    if record is not None:
                        record(session, existing)
                    return existing
                top = last_version_seq(session, deployment.environment_id, day)
                seq = (top or 0) + 1
                version = Version(
                    project_id=deployment.project_id,
                    environment_id=deployment.environment_id,
                    deployment_id=deployment.id,
                    version=f"{day}.{seq}",
                    day=day,
                    seq=seq,
                    sha=sha,
                    tasks=tasks,
                    artifact_digest=artifact_digest,
                    source_path=source_path,
                    venv_path=venv_path,
                    tasks_dir=tasks_dir,
                    release_tasks=release_tasks,
                )
                session.add(version)
                session.flush()
                dep = session.get(Deployment, deployment.id)
                if dep is not None:
                    dep.version_id = version.id
                if record is not None:
                    record(session, version)
                return version
        except IntegrityError:
            continue  # another deployment took this number; take the next
    raise Conflict("could not number a version after 50 attempts")


def spec_for(session: Session, version: Version) -> VersionSpec:
    env = session.get(Environment, version.environment_id)
    project = session.get(Project, version.project_id)
    assert env is not None and project is not None
    return spec_of(version, env, project)


def spec_of(version: Version, env: Environment, project: Project) -> VersionSpec:
    """What the runtime needs to serve ``version`` (of ``env``, of ``project``)."""
    return VersionSpec(
        version_id=version.id,
        version=version.version,
        artifact=ArtifactRef.on_host(
            digest=version.artifact_digest,
            source=Path(version.source_path),
            venv=Path(version.venv_path),
        ),
        tasks_dir=version.tasks_dir,
        context={
            "project": project.ref,
            "environment": env.name,
            "branch": env.branch,
            "deployment_id": version.deployment_id,
            "environment_id": env.id,
            "sha": version.sha,
        },
    )


def find_version(session: Session, env: Environment, version: str) -> Version:
    row = version_by_name(session, env.id, version)
    if row is None:
        where = f"preview branch {env.branch}" if env.branch else env.name
        raise NotFound(
            f"version {version} does not exist in {where}",
            hint="see `slipway versions` for the versions of this environment",
        )
    return row


def promotable(session: Session, env: Environment, version: str) -> Version:
    """The version, if it may become current in ``env``; a clear refusal otherwise."""
    if not version or not version.replace(".", "").isdigit():
        raise InvalidInput(f"{version!r} is not a version (expected YYYYMMDD.N)")
    row = find_version(session, env, version)
    dep = session.get(Deployment, row.deployment_id)
    # A gated deployment's version passed its health check and release tasks: it may be
    # promoted by hand while it waits, and after its gate failed or timed out.
    if dep is None or (dep.status != "deployed" and dep.gate is None):
        status = dep.status if dep else "missing"
        raise Conflict(
            f"version {version} was not deployed (its deployment is {status}); "
            "only deployed versions can be promoted"
        )
    if env.status == "archived":
        raise Conflict(f"preview branch {env.branch} is archived")
    return row


def previous_version(session: Session, env: Environment) -> Version:
    """The newest deployed version older than the current one: what rollback promotes."""
    if env.current_version_id is None:
        raise Conflict("this environment has no current version to roll back from")
    current = session.get(Version, env.current_version_id)
    assert current is not None
    row = deployed_version_before(session, env.id, current.id)
    if row is None:
        raise Conflict(f"there is no version before {current.version} to roll back to")
    return row


def promote(
    db: Database,
    runtime: Runtime,
    *,
    version_id: int,
    record: Callable[[Session, str, str | None], None] | None = None,
    check: Callable[[Session], None] | None = None,
) -> tuple[str, str | None]:
    """Make ``version_id`` current in its environment, atomically, once it is healthy.
    Returns ``(new, old)`` version strings; ``record(session, new, old)`` runs in the
    promoting transaction, and ``check(session)`` first in it (raising leaves the
    current version as it was)."""
    with db.read() as session:
        version = session.get(Version, version_id)
        if version is None:
            raise NotFound(f"version id {version_id} does not exist")
        spec = spec_for(session, version)
    runtime.ensure(spec)
    with db.transaction() as session:
        if check is not None:
            check(session)
        env = session.get(Environment, version.environment_id)
        assert env is not None
        if env.status == "archived":
            raise Conflict(f"preview branch {env.branch} is archived")
        old_id = env.current_version_id
        env.current_version_id = version_id
        env.updated_at = utcnow()
        row = session.get(Version, version_id)
        assert row is not None
        row.promoted_at = utcnow()
        old = session.get(Version, old_id) if old_id else None
        old_name = old.version if old else None
        waiting = session.get(Deployment, row.deployment_id)
        if waiting is not None and waiting.status == "waiting":
            waiting.status, waiting.finished_at = "deployed", utcnow()
        if record is not None:
            record(session, version.version, old_name)
    runtime.activate(spec)
    if old_id and old_id != version_id:
        runtime.retire(old_id)
    return version.version, old_name
