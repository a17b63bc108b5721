"""What every ``slipway`` command shares: the API client, output (tables or ``--json``),
the global options, and the root group :func:`main`.

Every command that reads or changes state talks to the API. Errors print one line to
stderr and exit 1. ``--json`` prints machine-readable output; it, ``--token`` and
``--api-url`` go before or after any command (see "global options"). Branch names go out
in the wire form of :mod:`controller.branchnames`. The commands live in the sibling
modules, one per concept; :mod:`controller.cli` imports them all onto :func:`main`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx
from rich.console import Console
from rich.table import Table

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
