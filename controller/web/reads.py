"""What the pages read: the API's own read functions, called as plain functions.

The pages show exactly what the API answers because they call the same handlers
(``controller.api.*``), which are plain functions under their decorators; arguments
FastAPI would fill from headers or query defaults are passed explicitly here. The one
read the API does not have yet — an environment's recent runs (:func:`recent_runs`) — is
kept here, beside its only caller, until the API offers it too. The project page reads
through :mod:`controller.web.overview` instead (one transaction, bounded lists).

The environment-variable section (:func:`envvar_rows`) reads the rows with the store
function the API's list uses (:func:`controller.secretstore.store.list_variables`) and
keeps only what the API's view says about a variable *besides* its value: the pages show
names, never values — not a secret's (the API never answers one) and not a plain one's
either, so nothing is decrypted for a page and a value typed into the wrong variable
cannot leak onto a screen. A preview branch lists the preview-wide variables it inherits
and its own overrides, marked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request

from controller.api import deployments as api_deployments
from controller.api import envvars as api_envvars
from controller.api import projects as api_projects
from controller.api import versions as api_versions
from controller.api.branches import EnvTarget, env_target
from controller.domain.projects import get_project
from controller.runs import get_run
from controller.secretstore.store import Scope, list_variables
from controller.store.environments import environment_by_key
from controller.store.overview import recent_runs_of_environment
from controller.views import environment_view, run_view, version_strings

SHOWN_DEPLOYMENTS = 50
SHOWN_VERSIONS = 100


def projects(request: Request) -> list[dict[str, Any]]:
    return api_projects.list_projects(request)


def project(request: Request, ref: str) -> dict[str, Any]:
    return api_projects.get_one(request, ref)


def environment(request: Request, ref: str, name: str, branch: str | None) -> dict[str, Any] | None:
    """One environment as the API's list shows it, or ``None``: found by its key, not by
    listing every preview branch of the project."""
    with request.app.state.services.db.read() as session:
        project = get_project(session, ref)
        env = environment_by_key(session, project.id, name, branch or "")
        if env is None:
            return None
        versions = version_strings(session, {env.current_version_id})
        return environment_view(env, versions.get(env.current_version_id or 0))


def deployments(
    request: Request,
    ref: str,
    *,
    env: str | None = None,
    branch: str | None = None,
    limit: int = SHOWN_DEPLOYMENTS,
) -> list[dict[str, Any]]:
    return api_deployments.list_deployments(
        request, ref, env=env, branch=branch, x_slipway_branch=None, limit=limit
    )


def deployment(request: Request, deployment_id: str) -> dict[str, Any]:
    return api_deployments.get_deployment(request, deployment_id)


def deployment_logs(request: Request, deployment_id: str, after: int = 0) -> dict[str, Any]:
    return api_deployments.get_logs(request, deployment_id, after=after)


def _target(ref: str, env: str, branch: str | None) -> EnvTarget:
    return env_target(ref, env, branch=branch, x_slipway_branch=None)


def versions(request: Request, ref: str, env: str, branch: str | None) -> list[dict[str, Any]]:
    return api_versions.list_versions(request, _target(ref, env, branch))


def rollback(request: Request, ref: str, env: str, branch: str | None) -> dict[str, Any]:
    return api_versions.post_rollback(request, _target(ref, env, branch))


def promote(
    request: Request, ref: str, env: str, *, branch: str | None, version: str
) -> dict[str, Any]:
    return api_versions.post_promote(
        request, _target(ref, env, branch), api_versions.PromoteBody(version=version)
    )


def run(request: Request, run_id: str) -> dict[str, Any]:
    return get_run(request.app.state.services.db, run_id, key=None, admin=True)


def recent_runs(request: Request, environment_id: int, limit: int = 50) -> list[dict[str, Any]]:
    with request.app.state.services.db.read() as session:
        rows = recent_runs_of_environment(session, environment_id, limit=limit)
        return [run_view(r, v, with_logs=False) for r, v in rows]


ENVVAR_FIELDS = ("name", "secret", "fork_safe", "source", "updated_by", "updated_at")


def envvar_rows(request: Request, ref: str, env: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``env`` (an environment view) sees, by name: each variable's ``secret``,
    ``fork_safe``, ``source``, ``updated_by``, ``updated_at`` and ``layer`` (``own``, or
    ``inherited`` from the preview root, or ``override`` of an inherited name). Never a
    value: :func:`api_envvars.variable_view` gets ``None`` for it and the key is dropped."""
    with request.app.state.services.db.read() as session:
        project = get_project(session, ref)
        own = list_variables(session, Scope.of(project, env["name"], env["branch"]))
        inherited = (
            list_variables(session, Scope.of(project, "preview", None)) if env["branch"] else []
        )
        views = {
            "own": [api_envvars.variable_view(row, None) for row in own],
            "inherited": [api_envvars.variable_view(row, None) for row in inherited],
        }
    overridden = {v["name"] for v in views["own"]}
    rows = [
        {
            **{k: v[k] for k in ENVVAR_FIELDS},
            "layer": "inherited",
            "overridden": v["name"] in overridden,
        }
        for v in views["inherited"]
    ]
    inherited_names = {v["name"] for v in views["inherited"]}
    rows += [
        {
            **{k: v[k] for k in ENVVAR_FIELDS},
            "layer": "override" if v["name"] in inherited_names else "own",
            "overridden": False,
        }
        for v in views["own"]
    ]
    return sorted(rows, key=lambda r: (r["name"], r["layer"] != "inherited"))


def duration_seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
    finish = datetime.fromisoformat(end.replace("Z", "+00:00"))
    return max(0.0, (finish - begin).total_seconds())
