"""Discovery interpreters started ahead of need: one ready per environment.

Discovering a version's tasks (``discover_main.py``) used to start the environment's
interpreter and import what discovery needs (``site`` with the environment's ``.pth``
files, ``json``, ``inspect``, ``pathlib``...) on the deploy's critical path: ~0.1-0.2 s
on a loaded 2-core machine, while importing a small project's task files takes a few
milliseconds. A standby (``discover_main.py --standby``) has done all of that and waits
on stdin for its arguments, so a build only pays for importing the tasks. The pool's
rules (used once, keyed by interpreter and exact environment, bounded, never outliving
the controller) are :mod:`controller.standby`'s; ~10 MB each.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from controller.standby import StandbyPool


class DiscoveryStandby(StandbyPool):
    def __init__(self, *, script: Path, cwd: Path, limit: int = 4) -> None:
        def start(python: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [str(python), "-I", "-B", str(script), "--standby"],
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )

        super().__init__(start, limit=limit)
