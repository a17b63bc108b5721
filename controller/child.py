"""The controller process's entry point: ``python -m controller.child``.

``slipway serve`` starts it (see :mod:`controller.supervisor`); ``slipway controller``
(hidden) runs the same thing from the CLI. It is not started through the CLI because the
CLI imports click, rich and the API client (httpx), ~7 MB of a process that uses none of
them; with the runtime's health checks on ``http.client``, the controller process imports
no HTTP client library at all (``tests/cli/test_controller_process.py`` checks it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def run(log_level: str, parent: int | None) -> None:
    from controller import cpus
    from controller.logs import setup_logging
    from controller.services import Services
    from controller.settings import load_settings, prepare
    from controller.supervisor import run_controller

    setup_logging(log_level, process_name="controller")
    settings, _notices = prepare(load_settings())
    cpus.confine(settings.runtime.controller_cpus)  # before any thread starts
    run_controller(Services(settings, role="controller"), parent=parent)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="slipway controller",
        description="The controller process `slipway serve` supervises (routing, builds, resync).",
    )
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--parent", type=int, default=None, help="exit when this pid is gone")
    args = parser.parse_args(argv)
    run(args.log_level, args.parent)


if __name__ == "__main__":
    main(sys.argv[1:])
