"""Runs: resolve the environment from its secret key, pick the version, validate the
payload, execute on the runtime and record the outcome.

A run is locked to the version it started on: the version is chosen (current, or pinned
with ``options.version``) and recorded before the run starts, and the run goes to that
version's worker, which stays up until its in-flight runs finish even if another version
is promoted meanwhile.
"""

from __future__ import annotations

import hmac
from typing import Any

import jsonschema
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.errors import Conflict, InvalidInput, NotFound, PermanentError
from controller.ids import new_id
from controller.runtimes.base import Runtime
from controller.secretstore.crypto import Cipher, key_hash
from controller.secretstore.store import resolve_for_environment
from controller.secretstore.variables import mask, mask_json, run_variables, secret_values
from controller.store.db import Database
from controller.store.tables import Environment, Project, Run, Version, utcnow
from controller.versions import find_version, spec_for
from controller.views import run_view


class Unauthorized(Exception):
    pass


def environment_for_key(session: Session, key: str | None, branch: str | None) -> Environment:
    """The environment a secret key (plus ``x-slipway-branch``) designates."""
    if not key or not key.startswith("sk_"):
        raise Unauthorized("a run needs an environment's secret key: Authorization: Bearer sk_…")
    env = session.execute(
        select(Environment).where(Environment.secret_key_hash == key_hash(key))
    ).scalar_one_or_none()
    if env is None or not hmac.compare_digest(env.secret_key_hash, key_hash(key)):
        raise Unauthorized("unknown secret key")
    if env.name == "preview" and env.branch is None:
        if not branch:
            raise InvalidInput("the preview key needs the x-slipway-branch header to pick a branch")
        target = session.execute(
            select(Environment).where(
                Environment.project_id == env.project_id,
                Environment.name == "preview",
                Environment.branch_key == branch,
            )
        ).scalar_one_or_none()
        if target is None:
            raise NotFound(f"preview branch {branch!r} does not exist")
        return target
    if branch and env.branch != branch:
        raise InvalidInput(
            f"this key belongs to {env.name}{'/' + env.branch if env.branch else ''}, "
            f"not to branch {branch!r}"
        )
    return env


def trigger(
    db: Database,
    runtime: Runtime,
    *,
    key: str | None,
    branch: str | None,
    task_id: str,
    payload: Any,
    version: str | None,
    cipher: Cipher | None = None,
) -> dict[str, Any]:
    run_id = new_id("run")
    with db.read() as session:
        env = environment_for_key(session, key, branch)
        if env.status == "archived":
            raise Conflict(
                f"preview branch {env.branch} is archived ({env.status_reason or 'closed'}); "
                "it takes no new runs"
            )
        project = session.get(Project, env.project_id)
        assert project is not None
        if project.disconnected_at is not None:
            raise Conflict(f"project {project.ref} is disconnected")
        row: Version | None
        if version:
            row = find_version(session, env, version)
        else:
            if env.current_version_id is None:
                raise Conflict(
                    "this environment has no current version yet: deploy first "
                    "(push to the branch, or `slipway deploy`)"
                )
            row = session.get(Version, env.current_version_id)
            assert row is not None
        task = next((t for t in row.tasks if t["id"] == task_id), None)
        if task is None:
            known = ", ".join(sorted(t["id"] for t in row.tasks)) or "none"
            raise NotFound(
                f"task {task_id!r} does not exist in version {row.version} (tasks: {known})"
            )
        schema = task.get("input_schema")
        if schema:
            try:
                jsonschema.validate(payload, schema)
            except jsonschema.ValidationError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "payload"
                raise InvalidInput(
                    f"payload does not match {task_id}'s input_schema at {where}: {exc.message}"
                ) from exc
            except jsonschema.SchemaError as exc:
                raise PermanentError(
                    f"{task_id}'s input_schema is not a valid JSON Schema: {exc.message}"
                ) from exc
        spec = spec_for(session, row)
        version_id, version_name = row.id, row.version
        max_duration = task.get("max_duration")
        run_env, secrets = run_environment(
            session,
            cipher,
            env,
            project=project,
            version=version_name,
            run_id=run_id,
            task_id=task_id,
        )
    with db.transaction() as session:
        session.add(
            Run(
                id=run_id,
                environment_id=env.id,
                version_id=version_id,
                task_id=task_id,
                status="running",
                payload=payload,
            )
        )
    try:
        result = runtime.run(
            spec,
            run_id=run_id,
            task_id=task_id,
            payload=payload,
            timeout=float(max_duration) if max_duration else None,
            env=run_env,
        )
    except Exception as exc:
        result = {
            "status": "failed",
            "output": None,
            "error": {"type": type(exc).__name__, "message": str(exc)},
            "logs": "",
        }
    result = mask_run_result(result, secrets)
    with db.transaction() as session:
        run = session.get(Run, run_id)
        assert run is not None
        run.status = result.get("status", "failed")
        run.output = result.get("output")
        run.error = result.get("error")
        run.logs = (result.get("logs") or "")[-262144:]
        run.duration_ms = result.get("duration_ms")
        run.finished_at = utcnow()
        return run_view(run, version_name)


def run_environment(
    session: Session,
    cipher: Cipher | None,
    env: Environment,
    *,
    project: Project,
    version: str,
    run_id: str,
    task_id: str,
) -> tuple[dict[str, str], list[str]]:
    """The run's variables, resolved now (a changed value reaches the next run, with no
    redeploy), plus the ``SLIPWAY_*`` run variables; and the secret values to mask."""
    variables = resolve_for_environment(session, cipher, env) if cipher is not None else {}
    run_env = run_variables(variables)
    run_env.update(
        SLIPWAY_PROJECT=project.ref,
        SLIPWAY_ENVIRONMENT=env.name,
        SLIPWAY_BRANCH=env.branch or "",
        SLIPWAY_VERSION=version,
        SLIPWAY_RUN_ID=run_id,
        SLIPWAY_TASK_ID=task_id,
    )
    return run_env, secret_values(variables)


def mask_run_result(result: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """Secret values a task printed, returned or raised become ``***``."""
    if not secrets:
        return result
    masked = dict(result)
    masked["logs"] = mask(result.get("logs") or "", secrets)
    masked["output"] = mask_json(result.get("output"), secrets)
    masked["error"] = mask_json(result.get("error"), secrets)
    return masked


def get_run(db: Database, run_id: str, *, key: str | None, admin: bool) -> dict[str, Any]:
    with db.read() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} does not exist")
        if not admin:
            env = session.execute(
                select(Environment).where(Environment.secret_key_hash == key_hash(key or ""))
            ).scalar_one_or_none()
            run_env = session.get(Environment, run.environment_id)
            allowed = (
                env is not None
                and run_env is not None
                and (
                    env.id == run_env.id
                    or (
                        env.name == "preview"
                        and env.branch is None
                        and run_env.project_id == env.project_id
                    )
                )
            )
            if not allowed:
                raise NotFound(f"run {run_id!r} does not exist")
        version = session.get(Version, run.version_id)
        return run_view(run, version.version if version else None)
