"""``slipway deployments``, ``logs``, ``deploy``, ``versions``, ``promote`` and ``rollback``."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

import click

from controller.branchnames import branch_headers
from controller.cli.base import (
    Api,
    _ctx_json,
    _env,
    console,
    env_option,
    fail,
    main,
    out,
    own_invocation,
    table,
)
from controller.models import FINAL_STATUSES as FINAL
from controller.models import SETTLED_STATUSES as SETTLED

# -- deployments -----------------------------------------------------------------------


def summarise_error(error: str | None, *, limit: int | None = None) -> str | None:
    """One line of a deployment's error: its first line, and the next one when the first
    is only a heading ("...:"); the "How to fix" line is added when no limit applies."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    if not lines:
        return None
    fix = next((line for line in lines[1:] if line.startswith("How to fix:")), None)
    summary = lines[0]
    if summary.endswith(":") and len(lines) > 1 and lines[1] != fix:
        summary += " " + lines[1]
    if limit is not None:
        return summary if len(summary) <= limit else summary[: limit - 1] + "…"
    return f"{summary} ({fix[0].lower()}{fix[1:]})" if fix else summary


def _deployment_rows(rows: list[dict[str, Any]]) -> None:
    table(rows, ["id", "environment", "branch", "sha", "status", "version", "created_at", "error"])


@main.command()
@click.option("--project", required=True)
@env_option()
@click.option("--branch")
@click.option("--limit", default=50, show_default=True)
@click.pass_context
def deployments(
    ctx: click.Context, project: str, env: str | None, branch: str | None, limit: int
) -> None:
    """List a project's deployments, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if env:
        params["env"] = _env(env)
    if branch:
        params["branch"] = branch
    rows = ctx.find_root().obj.get(f"/api/v1/projects/{project}/deployments", params=params)
    for row in rows:
        row["sha"] = (row.get("sha") or "")[:12] or None
        row["error"] = summarise_error(row.get("error"), limit=120)
    out(ctx, rows, _deployment_rows)


@main.command()
@click.argument("deployment_id")
@click.option("--follow", "-f", is_flag=True, help="keep printing until the deployment ends")
@click.pass_context
def logs(ctx: click.Context, deployment_id: str, follow: bool) -> None:
    """Print a deployment's logs, each step with its duration."""
    api = ctx.find_root().obj
    after = 0
    collected: list[dict[str, Any]] = []
    while True:
        page = api.get(f"/api/v1/deployments/{deployment_id}/logs", params={"after": after})
        for line in page["lines"]:
            after = line["id"]
            collected.append(line)
            if not _ctx_json(ctx):
                _print_log_line(line)
        if not follow or page["status"] in FINAL:
            break
        time.sleep(0.5)
    if _ctx_json(ctx):
        click.echo(json.dumps(collected, indent=2))


def _print_log_line(line: dict[str, Any]) -> None:
    style = {"error": "red", "warn": "yellow"}.get(line.get("level", ""), "")
    step = f"[dim]{line.get('step') or '-':>10}[/dim] "
    text = line["message"].replace("[", r"\[")
    console.print(step + (f"[{style}]{text}[/{style}]" if style else text), highlight=False)


def wait_for(api: Api, deployment_id: str, *, show_logs: bool) -> dict[str, Any]:
    after = 0
    status = None
    with console.status("queued", spinner="dots") as spinner:
        while True:
            page = api.get(f"/api/v1/deployments/{deployment_id}/logs", params={"after": after})
            for line in page["lines"]:
                after = line["id"]
                if show_logs:
                    _print_log_line(line)
            if page["status"] != status:
                status = page["status"]
                spinner.update(f"[bold]{status}[/bold]")
            if status in SETTLED:
                break
            time.sleep(0.3)
    return dict(api.get(f"/api/v1/deployments/{deployment_id}"))


@main.command()
@click.argument("path", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--project", required=True)
@env_option(default="production")
@click.option("--branch", help="the preview branch (with --env preview)")
@click.option(
    "--skip-promotion", is_flag=True, help="build and deploy, but leave the current version"
)
@click.option("--skip-sync-env-vars", is_flag=True)
@click.option(
    "--dry-run", is_flag=True, help="build locally without deploying; print where the build is"
)
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.pass_context
def deploy(
    ctx: click.Context,
    path: Path,
    project: str,
    env: str,
    branch: str | None,
    skip_promotion: bool,
    skip_sync_env_vars: bool,
    dry_run: bool,
    wait: bool,
) -> None:
    """Upload PATH's source and deploy it; prints the version."""
    from controller.sources.archive import make_archive

    env = _env(env)
    if env == "preview" and not branch:
        fail("--env preview needs --branch")
    if dry_run:
        _dry_run(ctx, path)
        return
    api = ctx.find_root().obj
    try:
        data = make_archive(path)
    except Exception as exc:
        fail(str(exc))
    params = {
        "env": env,
        "skip_promotion": skip_promotion,
        "skip_sync_env_vars": skip_sync_env_vars,
    }
    if branch:
        params["branch"] = branch
    from controller.sources.git import describe_worktree

    worktree = describe_worktree(path)
    if worktree is not None:
        params.update(sha=worktree.sha, dirty=worktree.dirty)
    dep = api.post(
        f"/api/v1/projects/{project}/deployments",
        params=params,
        content=data,
        headers={"Content-Type": "application/gzip"},
    )
    if not wait:
        out(ctx, dep, lambda d: console.print(f"Queued deployment {d['id']}"))
        return
    if not _ctx_json(ctx):
        source = f" of {worktree.sha[:12]}" if worktree else ""
        if worktree and worktree.dirty:
            source += " with uncommitted changes"
        console.print(
            f"Deployment [bold]{dep['id']}[/bold] ({len(data) >> 10} KiB uploaded{source})"
        )
    final = wait_for(api, dep["id"], show_logs=not _ctx_json(ctx))
    if _ctx_json(ctx):
        click.echo(json.dumps(final, indent=2))
    elif final["status"] == "waiting":
        console.print(
            f"[yellow]Version[/yellow] [bold]{final['version']}[/bold] is waiting for its "
            f"promotion gate {final.get('gate')} (until {final.get('gate_deadline')})"
        )
        click.echo(final["version"])
    elif final["status"] == "deployed":
        note = " (not promoted)" if skip_promotion else ""
        console.print(f"[green]Deployed version[/green] [bold]{final['version']}[/bold]{note}")
        if skip_promotion:
            command = f"{own_invocation()} promote {final['version']} --project {project}"
            command += f" --env {env}" + (f" --branch {shlex.quote(branch)}" if branch else "")
            console.print(f"Make it current with: {command}", highlight=False, markup=False)
        click.echo(final["version"])
    if final["status"] not in ("deployed", "waiting"):
        fail(f"deployment {final['id']} {final['status']}: {summarise_error(final.get('error'))}")


def _dry_run(ctx: click.Context, path: Path) -> None:
    """Build locally with the same builder the controller uses; deploy nothing."""
    import tempfile
    import threading

    from controller.builders.config import load_config
    from controller.builders.venv import VirtualenvBuilder
    from controller.sources.archive import make_archive, safe_extract

    base = Path(tempfile.mkdtemp(prefix="slipway-dry-run-"))
    checkout = base / "src"
    safe_extract(make_archive(path), checkout)
    config = load_config(checkout, config_path=None)
    builder = VirtualenvBuilder(
        cache_dir=Path(os.environ.get("SLIPWAY_DATA_DIR", ".slipway")).resolve() / "envs",
        home_dir=base / "home",
    )
    log = console.print if not _ctx_json(ctx) else (lambda _m: None)
    cancel = threading.Event()
    try:
        env = builder.prepare(
            checkout / config.root, install=config.install, log=log, cancel=cancel, timeout=1800
        )
        if config.pre_build:
            builder.pre_build(
                checkout / config.root,
                venv=Path(env["venv"]),
                command=config.pre_build,
                log=log,
                cancel=cancel,
                timeout=1800,
            )
        tasks = builder.discover(
            checkout / config.root, venv=Path(env["venv"]), tasks_dir=config.tasks_dir, timeout=120
        )
    except Exception as exc:
        fail(f"dry run failed: {exc} (build in {base})")
    result = {"build": str(base), "venv": env["venv"], "tasks": tasks}
    out(
        ctx,
        result,
        lambda r: console.print(
            f"Dry run: built {len(tasks)} tasks in {base} (environment {env['venv']}); nothing was deployed."
        ),
    )


@main.command()
@click.option("--project", required=True)
@env_option(required=True)
@click.option("--branch")
@click.pass_context
def versions(ctx: click.Context, project: str, env: str, branch: str | None) -> None:
    """List an environment's versions, newest first."""
    rows = ctx.find_root().obj.get(
        f"/api/v1/projects/{project}/environments/{_env(env)}/versions",
        headers=branch_headers(branch),
    )
    view = [
        {
            **r,
            "tasks": len(r["tasks"]),
            "sha": (r.get("sha") or "")[:12] or None,
            "current": "*" if r["current"] else "",
        }
        for r in rows
    ]
    out(
        ctx,
        rows,
        lambda _r: table(view, ["current", "version", "sha", "tasks", "created_at", "promoted_at"]),
    )


@main.command()
@click.argument("version")
@click.option("--project", required=True)
@env_option(required=True)
@click.option("--branch")
@click.pass_context
def promote(ctx: click.Context, version: str, project: str, env: str, branch: str | None) -> None:
    """Make VERSION the current version of an environment."""
    result = ctx.find_root().obj.post(
        f"/api/v1/projects/{project}/environments/{_env(env)}/promote",
        json={"version": version},
        headers=branch_headers(branch),
    )
    out(
        ctx,
        result,
        lambda r: console.print(
            f"[green]{r['version']}[/green] is current"
            + (f" (was {r['previous']})" if r.get("previous") else "")
        ),
    )


@main.command()
@click.option("--project", required=True)
@env_option(required=True)
@click.option("--branch")
@click.pass_context
def rollback(ctx: click.Context, project: str, env: str, branch: str | None) -> None:
    """Promote the version before the current one."""
    result = ctx.find_root().obj.post(
        f"/api/v1/projects/{project}/environments/{_env(env)}/rollback",
        headers=branch_headers(branch),
    )
    out(
        ctx,
        result,
        lambda r: console.print(
            f"Rolled back: [green]{r['version']}[/green] is current (was {r.get('previous')})"
        ),
    )
