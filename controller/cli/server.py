"""``slipway serve``, the hidden ``slipway controller`` it supervises, and ``slipway demo``."""

from __future__ import annotations

import sys

import click

from controller.cli.base import err_console, fail, main

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
        ws="none",  # no WebSocket routes: the websockets package stays unimported
        timeout_graceful_shutdown=int(settings.runtime.shutdown_grace_period),
    )


@main.command(hidden=True)
@click.option("--log-level", default="warning")
@click.option("--parent", type=int, default=None)
def controller(log_level: str, parent: int | None) -> None:
    """The controller process `slipway serve` supervises (routing, builds, resync)."""
    from controller.child import run

    run(log_level, parent)


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
