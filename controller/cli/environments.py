"""``slipway preview …``, ``slipway environments …`` and ``slipway tasks …``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from controller.branchnames import branch_headers, encode_branch
from controller.cli.base import Api, _env, console, env_option, fail, main, out, table

# -- previews and environments ----------------------------------------------------------


@main.group()
def preview() -> None:
    """Preview branches (one per pull request)."""


@preview.command("list")
@click.option("--project", required=True)
@click.pass_context
def preview_list(ctx: click.Context, project: str) -> None:
    rows = [
        e
        for e in ctx.find_root().obj.get(f"/api/v1/projects/{project}/environments")
        if e["branch"]
    ]
    out(
        ctx,
        rows,
        lambda r: table(
            r, ["branch", "status", "current_version", "pull_request", "status_reason"]
        ),
    )


@preview.command("archive")
@click.option("--project", required=True)
@click.option("--branch", required=True)
@click.pass_context
def preview_archive(ctx: click.Context, project: str, branch: str) -> None:
    result = ctx.find_root().obj.post(
        f"/api/v1/projects/{project}/branches/{encode_branch(branch)}/archive"
    )
    out(ctx, result, lambda r: console.print(f"Archived preview branch [bold]{r['branch']}[/bold]"))


@main.group()
def environments() -> None:
    """Environments and their secret keys."""


@environments.command("list")
@click.option("--project", required=True)
@click.pass_context
def environments_list(ctx: click.Context, project: str) -> None:
    rows = ctx.find_root().obj.get(f"/api/v1/projects/{project}/environments")
    out(ctx, rows, lambda r: table(r, ["name", "type", "branch", "status", "current_version"]))


def _secret_key(api: Api, project: str, env: str, branch: str | None) -> str:
    body = api.get(
        f"/api/v1/projects/{project}/environments/{_env(env)}/secret-key",
        headers=branch_headers(branch),
    )
    return str(body["secret_key"])


@environments.command("key")
@click.option("--project", required=True)
@env_option(required=True)
@click.option("--branch", help="a preview branch (without it: the preview-wide key)")
@click.pass_context
def environments_key(ctx: click.Context, project: str, env: str, branch: str | None) -> None:
    """Print the environment's secret key (sk_…) for triggering runs."""
    key = _secret_key(ctx.find_root().obj, project, _env(env), branch)
    out(ctx, {"secret_key": key}, lambda _r: click.echo(key))


# -- tasks -----------------------------------------------------------------------------


@main.group()
def tasks() -> None:
    """List and run tasks."""


@tasks.command("list")
@click.option("--project", required=True)
@env_option(required=True)
@click.option("--branch")
@click.option("--version")
@click.pass_context
def tasks_list(
    ctx: click.Context, project: str, env: str, branch: str | None, version: str | None
) -> None:
    params = {"version": version} if version else {}
    body = ctx.find_root().obj.get(
        f"/api/v1/projects/{project}/environments/{_env(env)}/tasks",
        params=params,
        headers=branch_headers(branch),
    )
    out(
        ctx,
        body,
        lambda b: table(
            [{**t, "schema": "yes" if t.get("input_schema") else ""} for t in b["tasks"]],
            ["id", "description", "schema", "max_duration"],
            title=f"Version {b['version']}",
        ),
    )


@tasks.command("run")
@click.argument("task_id")
@click.option("--project", required=True)
@env_option(required=True)
@click.option("--branch")
@click.option("--version", help="pin the run to this version")
@click.option("--payload", default="null", help="JSON payload")
@click.pass_context
def tasks_run(
    ctx: click.Context,
    task_id: str,
    project: str,
    env: str,
    branch: str | None,
    version: str | None,
    payload: str,
) -> None:
    """Run a task; prints its logs, then the result as the final JSON line."""
    try:
        data = json.loads(payload)
    except ValueError as exc:
        fail(f"--payload is not JSON: {exc}")
    api = ctx.find_root().obj
    name = _env(env)
    key = _secret_key(api, project, name, branch)
    body: dict[str, Any] = {"payload": data}
    if version:
        body["options"] = {"version": version}
    run = api.post(
        f"/api/v1/tasks/{task_id}/trigger", json=body, token=key, headers=branch_headers(branch)
    )
    logs_text = run.pop("logs", "") or ""
    if logs_text:
        sys.stdout.write(logs_text if logs_text.endswith("\n") else logs_text + "\n")
    click.echo(
        json.dumps({k: run[k] for k in ("id", "task_id", "status", "output", "error", "version")})
    )
    if run["status"] != "completed":
        sys.exit(1)
