"""``slipway kubernetes manifests``: prints what the Kubernetes runtime applies, as YAML.

A thin client of ``GET /api/v1/projects/{ref}/environments/{env}/manifests`` (attached to
the main group by :mod:`controller.cli`, helpers from :mod:`controller.cli.base`). The server renders with its ``SLIPWAY_KUBERNETES_*`` settings
whatever its ``SLIPWAY_RUNTIME``; no cluster is needed. Users of Argo CD or Flux can
commit the output (secret values are placeholders: see :mod:`controller.manifests`).
"""

from __future__ import annotations

from typing import Any

import click

from controller.branchnames import branch_headers
from controller.cli import base as cli


@click.group("kubernetes")
def kubernetes_group() -> None:
    """The Kubernetes runtime: see what it applies."""


@kubernetes_group.command("manifests")
@click.option("--project", required=True)
@click.option("--env", "env", required=True, help="production (prod), staging or preview")
@click.option("--branch", default=None, help="the preview branch")
@click.option("--version", default=None, help="a version (default: the current one)")
@click.pass_context
def kubernetes_manifests(
    ctx: click.Context, project: str, env: str, branch: str | None, version: str | None
) -> None:
    """Print the YAML the Kubernetes runtime applies for that environment."""
    params = {"version": version} if version else {}
    objects = ctx.find_root().obj.get(
        f"/api/v1/projects/{project}/environments/{cli._env(env)}/manifests",
        params=params,
        headers=branch_headers(branch),
    )

    def render(items: list[dict[str, Any]]) -> None:
        import yaml  # only this command writes YAML; `slipway serve` does not load it

        click.echo(yaml.safe_dump_all(items, sort_keys=False, allow_unicode=True), nl=False)

    cli.out(ctx, objects, render)
