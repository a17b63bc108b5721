"""``slipway env …`` and ``slipway keys rotate``: thin clients of the env var API.

Attached to the main group by :mod:`controller.cli`; the shared helpers come from
:mod:`controller.cli.base`.

A value given on the command line lands in the shell's history and in ``ps``: ``env set
NAME`` (no ``=``) reads the value from stdin instead, which is the way to set a secret.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from controller.branchnames import branch_headers
from controller.cli import base as cli


def _target(env: str, branch: str | None) -> tuple[str, dict[str, str]]:
    name = cli._env(env)
    if branch and name != "preview":
        cli.fail(f"--branch goes with --env preview, not {name}")
    return name, branch_headers(branch)


def _common(func: Any) -> Any:
    func = click.option("--branch", help="a preview branch (with --env preview)")(func)
    func = click.option(
        "--env", "env", required=True, help="production (or prod), staging or preview"
    )(func)
    return click.option("--project", required=True)(func)


@click.group("env")
def env_group() -> None:
    """Environment variables and secrets of an environment or preview branch."""


@env_group.command("list")
@_common
@click.pass_context
def env_list(ctx: click.Context, project: str, env: str, branch: str | None) -> None:
    """Names, secret, fork-safe, source, who and when (values: `env get`)."""
    name, headers = _target(env, branch)
    rows = ctx.find_root().obj.get(f"/api/v1/projects/{project}/envvars/{name}", headers=headers)
    columns = ["name", "secret", "fork_safe", "source", "updated_by", "updated_at"]
    cli.out(ctx, rows, lambda r: cli.table(r, columns))


@env_group.command("get")
@click.argument("name")
@_common
@click.pass_context
def env_get(ctx: click.Context, name: str, project: str, env: str, branch: str | None) -> None:
    """Print a variable's value (refused for a secret: its value is write-only)."""
    target, headers = _target(env, branch)
    row = ctx.find_root().obj.get(
        f"/api/v1/projects/{project}/envvars/{target}/{name}", headers=headers
    )
    if row.get("secret"):
        cli.fail(f"{name} is a secret: its value is write-only (set by {row.get('updated_by')})")
    cli.out(ctx, row, lambda r: click.echo(r["value"]))


@env_group.command("set")
@click.argument("assignments", nargs=-1, required=True)
@_common
@click.option("--secret", is_flag=True, help="write-only: never shown again, masked in logs")
@click.option(
    "--fork-safe/--no-fork-safe", default=None, help="fork previews may see it (default: kept)"
)
@click.pass_context
def env_set(
    ctx: click.Context,
    assignments: tuple[str, ...],
    project: str,
    env: str,
    branch: str | None,
    secret: bool,
    fork_safe: bool | None,
) -> None:
    """Set NAME=VALUE (several at once); NAME alone reads its value from stdin."""
    target, headers = _target(env, branch)
    values: dict[str, str] = {}
    from_stdin = [a for a in assignments if "=" not in a]
    if len(from_stdin) > 1:
        cli.fail("only one NAME without a value can read from stdin")
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep:
            value = sys.stdin.read()
            value = value[:-1] if value.endswith("\n") else value
        values[name] = value
    body: dict[str, Any] = {"variables": values, "secret": secret}
    if fork_safe is not None:
        body["fork_safe"] = fork_safe
    result = ctx.find_root().obj.post(
        f"/api/v1/projects/{project}/envvars/{target}", json=body, headers=headers
    )
    cli.out(ctx, result, lambda r: click.echo(f"Set {', '.join(r['written'])}"))


@env_group.command("unset")
@click.argument("name")
@_common
@click.pass_context
def env_unset(ctx: click.Context, name: str, project: str, env: str, branch: str | None) -> None:
    target, headers = _target(env, branch)
    result = ctx.find_root().obj.request(
        "DELETE", f"/api/v1/projects/{project}/envvars/{target}/{name}", headers=headers
    )
    cli.out(ctx, result, lambda _r: click.echo(f"Unset {name}"))


@env_group.command("import")
@click.argument("file", type=click.File("rb"))
@_common
@click.option("--override", is_flag=True, help="replace values that are already set")
@click.pass_context
def env_import(
    ctx: click.Context, file: Any, project: str, env: str, branch: str | None, override: bool
) -> None:
    """Import a dotenv or JSON file (``-`` is stdin)."""
    target, headers = _target(env, branch)
    data = file.read()
    result = ctx.find_root().obj.post(
        f"/api/v1/projects/{project}/envvars/{target}/import",
        params={"override": "true" if override else "false"},
        content=data,
        headers={**headers, "Content-Type": "text/plain"},
    )

    def render(r: dict[str, Any]) -> None:
        click.echo(f"Imported {len(r['imported'])} variable(s)")
        if r["kept"]:
            click.echo(
                f"Kept {len(r['kept'])} already set (use --override): {', '.join(r['kept'])}"
            )

    cli.out(ctx, result, render)


@env_group.command("history")
@_common
@click.pass_context
def env_history(ctx: click.Context, project: str, env: str, branch: str | None) -> None:
    """Who or what changed which name, when (never values)."""
    target, headers = _target(env, branch)
    rows = ctx.find_root().obj.get(
        f"/api/v1/projects/{project}/envvar-history/{target}", headers=headers
    )
    cli.out(ctx, rows, lambda r: cli.table(r, ["time", "name", "action", "actor"]))


@click.group("keys")
def keys_group() -> None:
    """The encryption keys of stored values."""


@keys_group.command("rotate")
@click.pass_context
def keys_rotate(ctx: click.Context) -> None:
    """Re-encrypt every stored value under the newest SLIPWAY_ENCRYPTION_KEY."""
    result = ctx.find_root().obj.post("/api/v1/keys/rotate")

    def render(r: dict[str, Any]) -> None:
        click.echo(
            f"Re-encrypted {r['env_vars']} env var(s) and {r['secret_keys']} secret key(s) "
            f"under key {r['key_id']}; {r['already_current']} already used it"
        )

    if cli._ctx_json(ctx):
        click.echo(json.dumps(result, indent=2))
    else:
        render(result)
