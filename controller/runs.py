"""Runs: resolve the environment from its secret key, pick the version, validate the
payload, execute on the runtime and record the outcome.

A run is locked to the version it started on: the version is chosen (current, or pinned
with ``options.version``) and recorded before the run starts, and the run goes to that
version's worker, which stays up until its in-flight runs finish even if another version
is promoted meanwhile.

What a run stores is bounded (:class:`RunLimits`): the API refuses a payload over its bound
before anything is stored (413); an output over its bound fails the run and is not stored;
logs keep their tail behind a truncation marker.

A key reads exactly the runs it could have triggered: an environment's key those of its
environment, the preview-wide key those of the project's preview branches. A valid key
used for another environment of its project is refused with 403 (:class:`Forbidden`); a
run of another project looks like one that does not exist.

Failures of the run itself are of two kinds. Expected ones (our own errors: a worker that
cannot be reached or started, a task missing from the worker) become a failed run with
their message and a one-line warning. Anything else is a bug: the run fails with a message
that points to the server log, where the traceback is logged. Log lines carry the run id,
task and environment, never the payload (it may hold secrets).

Over 400 lines: triggering and reading runs share one set of key rules (a key reads
exactly the runs it could have triggered) and one stored shape, bounds included.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from controller.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PermanentError,
    SlipwayError,
)
from controller.ids import new_id
from controller.runtimes.base import Runtime, VersionSpec
from controller.secretstore.crypto import Cipher, key_hash
from controller.secretstore.store import resolve_for_environment
from controller.secretstore.variables import mask, mask_json, run_variables, secret_values
from controller.store.db import Database
from controller.store.runs import insert_started, record_finished
from controller.store.tables import Environment, Project, Run, Version, utcnow
from controller.versions import find_version, spec_for
from controller.views import run_view

log = logging.getLogger(__name__)

MiB = 1024 * 1024


class Unauthorized(Exception):
    pass


@dataclass(frozen=True)
class RunLimits:
    """Bytes one run may store: its payload and output (as JSON) and its logs."""

    payload_bytes: int = MiB
    output_bytes: int = MiB
    log_bytes: int = MiB


class PayloadTooLarge(InvalidInput):
    """A trigger payload over ``SLIPWAY_MAX_PAYLOAD_BYTES`` (the API answers 413)."""


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def describe_size(limit: int) -> str:
    if limit % MiB == 0:
        return f"{limit // MiB} MiB"
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"


def _where(env: Environment) -> str:
    return f"{env.name}/{env.branch}" if env.branch else env.name


def _with_project_and_version(session: Session, query: Any, **params: Any) -> Environment | None:
    """The environment ``query`` finds, with its project and current version loaded
    in the same query: the trigger's later ``session.get`` calls find them in the
    session and make no round trip of their own."""
    row = session.execute(query, params).one_or_none()
    if row is None:
        return None
    session.info.setdefault("loaded", []).append(row)  # the session holds them weakly
    return row[0]


# Built once (every trigger runs them; building a statement costs about what running it
# does); the values go in as bound parameters.
_TARGET = (
    select(Environment, Project, Version)
    .join(Project, Project.id == Environment.project_id)
    .outerjoin(Version, Version.id == Environment.current_version_id)
)
_BY_KEY = _TARGET.where(Environment.secret_key_hash == bindparam("key_hash"))
_PREVIEW_BRANCH = _TARGET.where(
    Environment.project_id == bindparam("project_id"),
    Environment.name == "preview",
    Environment.branch_key == bindparam("branch_key"),
)


def environment_for_key(session: Session, key: str | None, branch: str | None) -> Environment:
    """The environment a secret key (plus ``x-slipway-branch``) designates."""
    if not key or not key.startswith("sk_"):
        raise Unauthorized("a run needs an environment's secret key: Authorization: Bearer sk_…")
    env = _with_project_and_version(session, _BY_KEY, key_hash=key_hash(key))
    if env is None or not hmac.compare_digest(env.secret_key_hash, key_hash(key)):
        raise Unauthorized("unknown secret key")
    if env.name == "preview" and env.branch is None:
        if not branch:
            raise InvalidInput("the preview key needs the x-slipway-branch header to pick a branch")
        target = _with_project_and_version(
            session, _PREVIEW_BRANCH, project_id=env.project_id, branch_key=branch
        )
        if target is None:
            raise NotFound(f"preview branch {branch!r} does not exist")
        return target
    if branch and env.branch != branch:
        raise Forbidden(f"this key belongs to {_where(env)}, not to branch {branch!r}")
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
    limits: RunLimits = RunLimits(),
) -> dict[str, Any]:
    if json_size(payload) > limits.payload_bytes:
        raise PayloadTooLarge(
            f"the payload is larger than {describe_size(limits.payload_bytes)}",
            hint="SLIPWAY_MAX_PAYLOAD_BYTES on the server sets the bound",
        )
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
            import jsonschema  # only tasks that declare an input_schema pay for it (~3 MB)

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
        where = _where(env)
    created_at = utcnow()
    with db.transaction(durable=False) as session:
        insert_started(
            session,
            run_id=run_id,
            environment_id=env.id,
            version_id=version_id,
            task_id=task_id,
            payload=payload,
            created_at=created_at,
            expires_at=created_at + run_deadline(max_duration),
        )
    result = _execute(
        runtime,
        spec,
        run_id=run_id,
        task_id=task_id,
        payload=payload,
        timeout=float(max_duration) if max_duration else None,
        env=run_env,
        where=where,
    )
    result = mask_run_result(result, secrets)
    result = _bounded(result, limits, run_id=run_id, task_id=task_id, where=where)
    finished_at = utcnow()
    run = Run(
        id=run_id,
        environment_id=env.id,
        version_id=version_id,
        task_id=task_id,
        payload=payload,
        status=result["status"],
        output=result["output"],
        error=result["error"],
        logs=result["logs"],
        duration_ms=result.get("duration_ms"),
        created_at=created_at,
        finished_at=finished_at,
    )
    with db.transaction(durable=False) as session:  # the caller gets the outcome anyway
        found = record_finished(
            session,
            run_id,
            status=run.status,
            output=run.output,
            error=run.error,
            logs=run.logs,
            duration_ms=run.duration_ms,
            finished_at=finished_at,
        )
    if not found:
        log.warning(
            "run %s of %s in %s: its record was deleted during the run", run_id, task_id, where
        )
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


# A run without ``max_duration`` may take this long; the runtimes allow a minute more to
# read its answer (controller.runtimes.runcall), and a run is certainly over after both.
UNBOUNDED_RUN_SECONDS = 24 * 3600
RUN_SLACK_SECONDS = 120


def run_deadline(max_duration: float | None) -> timedelta:
    """How long after its start a run is certainly over, answered or not."""
    return timedelta(seconds=(max_duration or UNBOUNDED_RUN_SECONDS) + RUN_SLACK_SECONDS)


def _failed(kind: str, message: str) -> dict[str, Any]:
    return {"status": "failed", "output": None, "error": {"type": kind, "message": message}}


def _execute(
    runtime: Runtime,
    spec: VersionSpec,
    *,
    run_id: str,
    task_id: str,
    payload: Any,
    timeout: float | None,
    env: dict[str, str],
    where: str,
) -> dict[str, Any]:
    try:
        return runtime.run(
            spec, run_id=run_id, task_id=task_id, payload=payload, timeout=timeout, env=env
        )
    except SlipwayError as exc:
        log.warning("run %s of %s in %s failed: %s", run_id, task_id, where, exc)
        return {**_failed(type(exc).__name__, str(exc)), "logs": ""}
    except Exception:
        log.exception("run %s of %s in %s: unexpected error", run_id, task_id, where)
        return {
            **_failed(
                "InternalError", f"an unexpected error ended run {run_id}; see the server log"
            ),
            "logs": "",
        }


def _bounded(
    result: dict[str, Any], limits: RunLimits, *, run_id: str, task_id: str, where: str
) -> dict[str, Any]:
    """The result as stored: output within its bound (or a failed run), logs' tail."""
    status = result.get("status")
    out = {
        "status": status if status in ("completed", "failed", "timed_out") else "failed",
        "output": result.get("output"),
        "error": result.get("error"),
        "logs": truncate_logs(result.get("logs") or "", limits.log_bytes),
        "duration_ms": result.get("duration_ms"),
    }
    error = out["error"]
    if json_size(error) > limits.output_bytes:
        message = str(error.get("message") if isinstance(error, dict) else error)
        out["error"] = {
            "type": error.get("type") if isinstance(error, dict) else "Error",
            "message": message[:4096] + " [slipway: error truncated]",
        }
    size = json_size(out["output"])
    if size > limits.output_bytes:
        log.warning(
            "run %s of %s in %s: output of %d bytes over the bound of %d, not stored",
            run_id,
            task_id,
            where,
            size,
            limits.output_bytes,
        )
        out.update(
            _failed(
                "OutputTooLarge",
                f"the run's output ({size} bytes as JSON) is larger than "
                f"{describe_size(limits.output_bytes)}; it was not stored (return less, or "
                "raise SLIPWAY_MAX_OUTPUT_BYTES on the server)",
            )
        )
    return out


def truncate_logs(text: str, limit: int) -> str:
    """The last ``limit`` bytes of ``text`` (UTF-8), behind a marker saying so."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    marker = f"[slipway: logs truncated, showing the last {limit} of {len(data)} bytes]\n"
    tail = data[-(limit - len(marker.encode())) :].decode("utf-8", errors="ignore")
    return marker + tail


def get_run(db: Database, run_id: str, *, key: str | None, admin: bool) -> dict[str, Any]:
    with db.read() as session:
        run = session.get(Run, run_id)
        if not admin:
            _check_reader(session, key, run, run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} does not exist")
        version = session.get(Version, run.version_id)
        return run_view(run, version.version if version else None)


def _check_reader(session: Session, key: str | None, run: Run | None, run_id: str) -> None:
    """Let ``key`` read ``run`` only if the key could have triggered it."""
    if not key or not key.startswith("sk_"):
        raise Unauthorized("reading a run needs its environment's secret key or the admin token")
    env = session.execute(
        select(Environment).where(Environment.secret_key_hash == key_hash(key))
    ).scalar_one_or_none()
    if env is None:
        raise Unauthorized("unknown secret key")
    run_env = session.get(Environment, run.environment_id) if run is not None else None
    if run_env is None or run_env.project_id != env.project_id:
        raise NotFound(f"run {run_id!r} does not exist")
    preview_wide = env.name == "preview" and env.branch is None
    if run_env.id == env.id or (
        preview_wide and run_env.name == "preview" and run_env.branch is not None
    ):
        return
    raise Forbidden(f"this key belongs to {_where(env)}; run {run_id} is not one of its runs")
