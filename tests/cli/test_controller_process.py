"""The controller process (``python -m controller.child``) carries only what it uses.

Every live preview's controller shares one process, but that process's baseline is paid
once per machine and counted in the previews benchmark's controller RSS: the CLI's click
and rich and the httpx client were ~7 MB of it (at import). This imports what the process imports
at start (its entry point and the wiring it builds) in a fresh interpreter and checks
that none of those libraries came with it.
"""

from __future__ import annotations

import json
import subprocess
import sys

NOT_IN_THE_CONTROLLER = ("httpx", "click", "rich", "pygments", "uvicorn", "fastapi", "jinja2")

PROBE = """
import json, sys
import controller.child
import controller.logs, controller.services, controller.settings, controller.supervisor
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_the_controller_process_imports_no_cli_web_or_http_client_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(json.loads(out.stdout))
    assert "sqlalchemy" in loaded and "controller" in loaded  # the probe did import
    assert loaded.isdisjoint(NOT_IN_THE_CONTROLLER), sorted(loaded & set(NOT_IN_THE_CONTROLLER))


def test_the_entry_point_explains_its_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controller.child", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "--parent" in out.stdout and "--log-level" in out.stdout
