"""The ``slipway`` command. Every command that reads or changes state talks to the API.

Errors print one line to stderr and exit 1. ``--json`` prints machine-readable output;
it, ``--token`` and ``--api-url`` go before or after any command (see "global options").
Branch names go out in the wire form of :mod:`controller.branchnames`. The file is long
because each command is a thin, flat wrapper of one API call, read top to bottom like
the SPEC's command list.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx
from rich.console import Console
from rich.table import Table

from controller.branchnames import branch_headers, encode_branch
from controller.models import FINAL_STATUSES as FINAL
from controller.models import SETTLED_STATUSES as SETTLED
from controller.models import normalise_environment

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class CliError(click.ClickException):
    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def fail(message: str) -> NoReturn:
    raise CliError(message)


class Api:
    """The server's API. The client is made on first use, so options given after the
    command (parsed after the root group ran) can still change the URL and the token."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._client: httpx.Client | None = None

    def configure(self, *, url: str | None = None, token: str | None = None) -> None:
        if url is not None:
            self.url = url.rstrip("/")
        if token is not None:
            self.token = token

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.url, timeout=httpx.Timeout(30.0, read=None), trust_env=False
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def request(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {}) or {}
        bearer = token or self.token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        try:
            response = self.client.request(method, path, headers=headers, **kwargs)
        except httpx.ConnectError:
            fail(f"cannot reach the Slipway API at {self.url}: is `slipway serve` running?")
        except httpx.HTTPError as exc:
            fail(f"request to {self.url}{path} failed: {exc}")
        if response.status_code >= 400:
            try:
                body = response.json()
                message = body.get("error") or body.get("detail") or response.text
                if body.get("hint"):
                    message += f" ({body['hint']})"
            except ValueError:
                message = response.text.strip() or response.reason_phrase
            fail(f"{message} [HTTP {response.status_code}]")
        return response.json() if response.content else None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


def own_invocation() -> str:
    """This same ``slipway``, as a shell word that works when printed for the user to copy:
    ``slipway`` when PATH finds this very program, else its absolute path (the README's
    install leaves it in ``.venv/bin``, not on PATH), else ``python -m controller.cli``."""
    argv0 = sys.argv[0]
    if Path(argv0).name == "slipway":
        found = shutil.which("slipway")
        path = shutil.which(argv0) if "/" not in argv0 else argv0
        if found and path and os.path.samefile(found, path):
            return "slipway"
        if path:
            return shlex.quote(os.path.abspath(path))
    return f"{shlex.quote(sys.executable)} -m controller.cli"


def _default_token(data_dir: str) -> str | None:
    path = Path(data_dir) / "admin_token"
    try:
        return path.read_text().strip()
    except OSError:
        return None


pass_api = click.make_pass_decorator(Api)


def table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    if not rows:
        console.print("[dim](none)[/dim]")
        return
    t = Table(title=title, show_lines=False)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*["" if row.get(c) is None else str(row.get(c)) for c in columns])
    console.print(t)


def env_option(default: str | None = None, required: bool = False) -> Callable[[Any], Any]:
    return click.option(
        "--env",
        "env",
        default=default,
        required=required,
        help="production (or prod), staging or preview",
    )


def _env(value: str) -> str:
    try:
        return normalise_environment(value)
    except ValueError as exc:
        fail(str(exc))


# -- global options ---------------------------------------------------------------------
#
# `--api-url`, `--token` and `--json` belong to the root group, and every command and
# group below it accepts them too (SPEC: "after any command as well as before it"). The
# classes below add the late copies to each command once, so no command declares them.
# A late copy has no default and no envvar: it only overrides what the root resolved.

_API_URL_HELP = "the server's API (SLIPWAY_API_URL)"
_AUTH_HELP = "admin token (SLIPWAY_TOKEN; default: the data dir's)"
_JSON_HELP = "machine-readable output"


def _late_api_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().obj.configure(url=value)


def _late_token(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().obj.configure(token=value)


def _late_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta["slipway.json"] = True


def _late_global_options() -> list[click.Parameter]:
    return [
        click.Option(["--api-url"], expose_value=False, callback=_late_api_url, help=_API_URL_HELP),
        click.Option(["--token"], expose_value=False, callback=_late_token, help=_AUTH_HELP),
        click.Option(
            ["--json"], is_flag=True, expose_value=False, callback=_late_json, help=_JSON_HELP
        ),
    ]


class SlipwayCommand(click.Command):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_late_global_options())


class SlipwayGroup(click.Group):
    command_class = SlipwayCommand
    group_class = type  # subgroups are SlipwayGroups, so their commands get the options too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_late_global_options())


class RootGroup(click.Group):
    command_class = SlipwayCommand
    group_class = SlipwayGroup


@click.group(cls=RootGroup)
@click.option(
    "--api-url",
    envvar="SLIPWAY_API_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help=_API_URL_HELP,
)
@click.option("--token", envvar="SLIPWAY_TOKEN", default=None, help=_AUTH_HELP)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.version_option(package_name="slipway")
@click.pass_context
def main(ctx: click.Context, api_url: str, token: str | None, as_json: bool) -> None:
    """Slipway: GitOps deploys for background-task workers."""
    data_dir = os.environ.get("SLIPWAY_DATA_DIR", ".slipway")
    api = Api(api_url, token or os.environ.get("SLIPWAY_ADMIN_TOKEN") or _default_token(data_dir))
    ctx.obj = api
    ctx.call_on_close(api.close)
    ctx.meta["slipway.json"] = as_json


def _ctx_json(ctx: click.Context) -> bool:
    return bool(ctx.meta.get("slipway.json"))


def out(ctx: click.Context, data: Any, render: Callable[[Any], None]) -> None:
    if _ctx_json(ctx):
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


# -- serve -----------------------------------------------------------------------------


@main.command()
@click.option("--host", default=None, help="default: SLIPWAY_HOST or 127.0.0.1")
@click.option("--port", default=None, type=int, help="default: SLIPWAY_PORT or 8080")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str | None, port: int | None, log_level: str) -> None:
    """Run the webhook receiver, the API and the controller."""
    import signal

    import uvicorn

    from controller.api.app import create_app
    from controller.github.startup import check_app
    from controller.logs import setup_logging
    from controller.services import Services
    from controller.settings import load_settings, prepare

    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    setup_logging(log_level, process_name="web")
    try:
        settings, notices = prepare(load_settings(**overrides))
        app_notice = check_app(settings)  # a wrong App id or key stops here, clearly
        services = Services(settings, role="web", log_level=log_level)
    except Exception as exc:  # settings or database errors: one clear line
        fail(f"cannot start: {exc}")
    for notice in notices:
        err_console.print(f"[yellow]{notice}[/yellow]")
    if app_notice:
        err_console.print(app_notice, markup=False)
    if not settings.webhook_secret:
        err_console.print(
            "[yellow]SLIPWAY_WEBHOOK_SECRET is not set: every webhook delivery is refused (503).[/yellow]"
        )
    err_console.print(
        f"Slipway listening on http://{settings.server.host}:{settings.server.port} "
        f"(data in {settings.data_dir}, database {settings.database_url.split('://')[0]}, "
        f"runtime {settings.runtime.runtime})"
    )
    app = create_app(services)
    # uvicorn re-raises the stop signal once it has shut down; a no-op handler makes a
    # graceful stop (SIGTERM, Ctrl-C) exit 0 instead of dying by the signal.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=log_level.lower(),
        log_config=None,  # uvicorn's lines go through setup_logging's handler (text or JSON)
        access_log=False,
        timeout_graceful_shutdown=int(settings.runtime.shutdown_grace_period),
    )


@main.command(hidden=True)
@click.option("--log-level", default="warning")
@click.option("--parent", type=int, default=None)
def controller(log_level: str, parent: int | None) -> None:
    """The controller process `slipway serve` supervises (routing, builds, resync)."""
    from controller.logs import setup_logging
    from controller.services import Services
    from controller.settings import load_settings, prepare
    from controller.supervisor import run_controller

    setup_logging(log_level, process_name="controller")
    settings, _notices = prepare(load_settings())
    run_controller(Services(settings, role="controller"), parent=parent)


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
        console.print(f"[bold]promotion_timeout[/bold]: {_duration(int(p['promotion_timeout']))}")
    if not p.get("deploying"):
        console.print(f"[red]not deploying:[/red] {p.get('not_deploying_reason')}")


def _duration(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _project_body(fields: dict[str, Any]) -> dict[str, Any]:
    """The API body of the project options: ``--promote-after ENV=GATE`` pairs become
    ``promotion_gates`` (``ENV=none`` removes that environment's gate)."""
    pairs = fields.pop("promote_after", ()) or ()
    body = {k: v for k, v in fields.items() if v is not None}
    gates: dict[str, str | None] = {}
    for pair in pairs:
        env, sep, gate = pair.partition("=")
        if not sep or not env.strip() or not gate.strip():
            fail(
                f"--promote-after {pair!r}: use ENV=GATE, e.g. production=github-deployment:Production"
            )
        gates[_env(env.strip())] = None if gate.strip().lower() == "none" else gate.strip()
    if gates:
        body["promotion_gates"] = gates
    if body.get("promotion_timeout") is not None:
        from controller.errors import InvalidInput
        from controller.gates.spec import parse_duration

        try:
            body["promotion_timeout"] = parse_duration(body["promotion_timeout"])
        except InvalidInput as exc:
            fail(f"--promotion-timeout: {exc.message} ({exc.hint or ''})")
    return body


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


# -- demo ------------------------------------------------------------------------------


@main.command()
@click.option(
    "--keep-running/--no-keep-running",
    default=None,
    help="keep the server up until Ctrl-C to explore it (default: at a terminal)",
)
@click.option("--port", default=0, type=int, help="default: a free port")
def demo(keep_running: bool | None, port: int) -> None:
    """Run Slipway's main job end to end, offline: pushes, a pull request, runs."""
    from controller.demo.run import run_demo

    sys.exit(run_demo(keep_running=keep_running, port=port))


from controller.cli_env import env_group, keys_group  # noqa: E402 - see cli_env's docstring
from controller.cli_github import github_group  # noqa: E402 - as cli_env

main.add_command(env_group)
main.add_command(keys_group)
main.add_command(github_group)
# Groups from other modules are plain click groups: give them and their commands the
# global options too (--json, --token, --api-url after the command).
for _group in (env_group, keys_group, github_group):
    for _command in (_group, *_group.commands.values()):
        _command.params.extend(_late_global_options())

if __name__ == "__main__":  # pragma: no cover
    main()
