"""``slipway github setup|status``: thin clients of ``/api/v1/github``.

Attached to the main group by :mod:`controller.cli` (helpers from
:mod:`controller.cli.base`). Nothing here sees a secret of the App: the
server keeps them, and its answers never carry them.
"""

from __future__ import annotations

from typing import Any

import click

from controller.cli import base as cli


@click.group("github")
def github_group() -> None:
    """The GitHub App: create it (manifest flow), see its installations."""


@github_group.command("setup")
@click.option("--org", default=None, help="create the App in this organization")
@click.pass_context
def github_setup(ctx: click.Context, org: str | None) -> None:
    """Print a one-time URL (10 minutes) of the page that creates the GitHub App."""
    answer = ctx.find_root().obj.post("/api/v1/github/setup", json={"org": org})

    def render(a: dict[str, Any]) -> None:
        click.echo("Open this URL in a browser signed in to GitHub (valid once, 10 minutes):")
        click.echo(a["url"])

    cli.out(ctx, answer, render)


@github_group.command("status")
@click.pass_context
def github_status(ctx: click.Context) -> None:
    """The App, its installations and their repositories."""
    answer = ctx.find_root().obj.get("/api/v1/github/status")

    def render(a: dict[str, Any]) -> None:
        app = a.get("app")
        if not app:
            click.echo("No GitHub App configured: run `slipway github setup`.")
            return
        name = app.get("slug") or app.get("name") or ""
        click.echo(f"App {app['id']} {name} ({app['source']}) {app.get('html_url') or ''}".rstrip())
        if a.get("error"):
            click.echo(f"GitHub could not be asked: {a['error']}")
        rows = [
            {
                "installation": i["id"],
                "account": i["account"],
                "suspended": i["suspended"],
                "repositories": ", ".join(i["repositories"]) or "-",
            }
            for i in a.get("installations", [])
        ]
        cli.table(rows, ["installation", "account", "suspended", "repositories"])

    cli.out(ctx, answer, render)
