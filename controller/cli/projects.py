"""``slipway projects …`` and ``slipway events``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from controller.cli.base import console, fail, main, out, table

# -- projects --------------------------------------------------------------------------


def project_options(create: bool) -> Callable[[Any], Any]:
    def decorate(fn: Any) -> Any:
        opts = [
            click.option("--repo", required=create, help="OWNER/NAME on GitHub"),
            click.option(
                "--clone-url", help="where to fetch from (a local path or file:// URL works)"
            ),
            click.option("--production-branch", help="default: the repository's default branch"),
            click.option("--staging-branch"),
            click.option(
                "--previews/--no-previews", default=None, help="preview branches for pull requests"
            ),
            click.option(
                "--fork-previews/--no-fork-previews",
                default=None,
                help="previews for pull requests from forks (never with secrets)",
            ),
            click.option("--preview-limit", type=int, help="active preview branches at most"),
            click.option("--config", "config_path", help="path of slipway.toml (monorepos)"),
            click.option("--install-command"),
            click.option("--pre-build-command"),
        ]
        if not create:
            opts.append(
                click.option(
                    "--connect",
                    "connected",
                    flag_value=True,
                    default=None,
                    help="reconnect a disconnected project",
                )
            )
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return decorate


def _render_project(p: dict[str, Any]) -> None:
    for key in (
        "ref",
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
        "status",
    ):
        console.print(f"[bold]{key}[/bold]: {p.get(key) if p.get(key) is not None else '-'}")
    if not p.get("deploying"):
        console.print(f"[red]not deploying:[/red] {p.get('not_deploying_reason')}")


def _warn(answer: dict[str, Any]) -> None:
    for warning in answer.get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)


@main.group()
def projects() -> None:
    """Connect repositories and change their settings."""


@projects.command("create")
@click.argument("ref")
@project_options(create=True)
@click.pass_context
def projects_create(ctx: click.Context, ref: str, **fields: Any) -> None:
    body = {"ref": ref, **{k: v for k, v in fields.items() if v is not None}}
    project = ctx.find_root().obj.post("/api/v1/projects", json=body)
    _warn(project)
    out(
        ctx,
        project,
        lambda p: console.print(f"Created project [bold]{p['ref']}[/bold] for {p['repo']}"),
    )


@projects.command("list")
@click.pass_context
def projects_list(ctx: click.Context) -> None:
    rows = ctx.find_root().obj.get("/api/v1/projects")
    out(
        ctx,
        rows,
        lambda r: table(
            r, ["ref", "repo", "production_branch", "staging_branch", "previews", "status"]
        ),
    )


@projects.command("show")
@click.argument("ref")
@click.pass_context
def projects_show(ctx: click.Context, ref: str) -> None:
    api = ctx.find_root().obj
    project = api.get(f"/api/v1/projects/{ref}")
    envs = api.get(f"/api/v1/projects/{ref}/environments")
    project["environments"] = envs

    def render(p: dict[str, Any]) -> None:
        _render_project(p)
        table(envs, ["name", "type", "branch", "status", "current_version"], title="Environments")

    out(ctx, project, render)


@projects.command("update")
@click.argument("ref")
@project_options(create=False)
@click.pass_context
def projects_update(ctx: click.Context, ref: str, **fields: Any) -> None:
    body = {k: v for k, v in fields.items() if v is not None}
    if not body:
        fail("nothing to update: pass at least one option (see --help)")
    project = ctx.find_root().obj.request("PATCH", f"/api/v1/projects/{ref}", json=body)
    _warn(project)
    out(ctx, project, lambda p: console.print(f"Updated project [bold]{p['ref']}[/bold]"))


@projects.command("disconnect")
@click.argument("ref")
@click.pass_context
def projects_disconnect(ctx: click.Context, ref: str) -> None:
    project = ctx.find_root().obj.request("DELETE", f"/api/v1/projects/{ref}")
    out(
        ctx,
        project,
        lambda p: console.print(
            f"Disconnected [bold]{p['ref']}[/bold]: it no longer deploys; its data is kept."
        ),
    )


@main.command()
@click.option("--project", required=True)
@click.pass_context
def events(ctx: click.Context, project: str) -> None:
    """What Slipway decided about a project's deliveries (skipped previews, access, ...)."""
    rows = ctx.find_root().obj.get(f"/api/v1/projects/{project}/events")
    out(ctx, rows, lambda r: table(r, ["created_at", "kind", "message"]))
