"""The ``slipway`` command (entry point ``controller.cli:main``; ``python -m controller.cli``
runs it too). Each command is a thin, flat wrapper of one API call, grouped by concept:

* :mod:`~controller.cli.base` — the API client, output, global options, the root group;
* :mod:`~controller.cli.server` — ``serve``, ``controller`` (hidden), ``demo``;
* :mod:`~controller.cli.projects` — ``projects …``, ``events``;
* :mod:`~controller.cli.deployments` — ``deployments``, ``logs``, ``deploy``, ``versions``,
  ``promote``, ``rollback``;
* :mod:`~controller.cli.environments` — ``preview …``, ``environments …``, ``tasks …``;
* :mod:`~controller.cli.env` — ``env …``, ``keys rotate``;
* :mod:`~controller.cli.github` — ``github …``.

Importing the modules registers their commands on :func:`~controller.cli.base.main`.
"""

from __future__ import annotations

from controller.cli import deployments, environments, projects, server
from controller.cli.base import _late_global_options, main, own_invocation
from controller.cli.env import env_group, keys_group
from controller.cli.github import github_group

main.add_command(env_group)
main.add_command(keys_group)
main.add_command(github_group)
# Groups from other modules are plain click groups: give them and their commands the
# global options too (--json, --token, --api-url after the command).
for _group in (env_group, keys_group, github_group):
    for _command in (_group, *_group.commands.values()):
        _command.params.extend(_late_global_options())

__all__ = ["deployments", "environments", "main", "own_invocation", "projects", "server"]
