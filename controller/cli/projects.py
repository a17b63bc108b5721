"""``slipway projects …`` and ``slipway events``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from controller.cli.base import console, fail, main, out, table
from controller.errors import InvalidInput
from controller.gates.spec import format_duration, parse_duration
from controller.models import normalise_environment

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
            click.option(
                "--promote-after",
                "promote_after",
                multiple=True,
                metavar="ENV=GATE",
                help="promote only once GATE passes: github-deployment:NAME, check-run:NAME, "
                "kubernetes:NAMESPACE/DEPLOYMENT or manual (ENV=none removes it; repeatable)",
            ),
            click.option(
                "--promotion-timeout",
                metavar="DURATION",
                help="how long a gated deployment waits: 90s, 30m, 2h (default 30m)",
            ),
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
    gates = p.get("promotion_gates") or {}
    promote_after = ", ".join(f"{env}={gate}" for env, gate in sorted(gates.items()))
    console.print(f"[bold]promote_after[/bold]: {promote_after or '- (promote at once)'}")
    if p.get("promotion_timeout") is not None:
        console.print(
            f"[bold]promotion_timeout[/bold]: {format_duration(int(p['promotion_timeout']))}"
        )
    if not p.get("deploying"):
        console.print(f"[red]not deploying:[/red] {p.get('not_deploying_reason')}")


def _warn(answer: dict[str, Any]) -> None:
    for warning in answer.get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)


def _project_body(fields: dict[str, Any]) -> dict[str, Any]:
    """The API body of the project options: ``--promote-after ENV=GATE`` pairs become
    ``promotion_gates`` (``ENV=none`` removes that environment's gate) and the timeout
    a number of seconds."""
    pairs = fields.pop("promote_after", ()) or ()
    body = {k: v for k, v in fields.items() if v is not None}
    gates: dict[str, str | None] = {}
    for pair in pairs:
        env, sep, gate = pair.partition("=")
        if not sep or not env.strip() or not gate.strip():
            fail(f"--promote-after {pair!r}: use ENV=GATE, e.g. production=github-deployment:Production")  # fmt: skip
        try:
            name = normalise_environment(env)
        except ValueError as exc:
            fail(f"--promote-after {pair!r}: {exc}")
        gates[name] = None if gate.strip().lower() == "none" else gate.strip()
    if gates:
        body["promotion_gates"] = gates
    if body.get("promotion_timeout") is not None:
        try:
            body["promotion_timeout"] = parse_duration(body["promotion_timeout"])
        except InvalidInput as exc:
            fail(f"--promotion-timeout: {exc.message} ({exc.hint or ''})")
    return body


@main.group()
def projects() -> None:
    """Connect repositories and change their settings."""


@projects.command("create")
@click.argument("ref")
@project_options(create=True)
@click.pass_context
def projects_create(ctx: click.Context, ref: str, **fields: Any) -> None:
    body = {"ref": ref, **_project_body(fields)}
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
    body = _project_body(fields)
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
