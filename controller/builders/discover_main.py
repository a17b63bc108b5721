"""Task discovery for one built version, run under the user's virtualenv.

    <venv>/bin/python -I -B discover_main.py --source DIR --tasks-dir tasks

Importing the user's tasks is the only way to learn their metadata, and it must happen
with the user's dependencies, so the builder runs this file as a subprocess of the
version's own interpreter. Slipway is not installed there: this script is standard
library only and loads ``controller/taskfiles.py`` by path.

It prints exactly one JSON document on stdout::

    {"tasks": [{"id", "file", "description", "input_schema", "output_schema",
                "schedulable", "max_duration", "is_async"}],
     "errors": [{"file", "type", "message", "line", "traceback"}]}

and exits 0 when ``errors`` is empty, 2 otherwise (any other code, or no JSON, means the
script itself could not run). Every task file is tried, so one run reports every broken
file. What task modules print while being imported, from Python or from subprocesses,
is sent to stderr at the descriptor level so it cannot corrupt the document.

**Standby** (``discover_main.py --standby``): the interpreter starts and imports what
discovery needs, then blocks on one line of stdin, ``{"argv": [...]}``, the arguments
it would otherwise have had, and goes on as above; at end of file (the controller closed
the pipe or died) it exits 0 without output. The controller keeps one such process per
environment ready (:mod:`controller.builders.standby`), so a build pays for importing the
tasks, not for starting Python.

The process ends with ``os._exit`` after flushing: a task module that starts a
non-daemon thread or registers a hanging ``atexit`` hook must not stall the build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

TASKFILES_MODULE = "_slipway_taskfiles"


def _load_taskfiles() -> ModuleType:
    """Import ``controller/taskfiles.py`` by path: ``controller`` is not importable here."""
    if TASKFILES_MODULE in sys.modules:
        return sys.modules[TASKFILES_MODULE]
    path = Path(__file__).resolve().parent.parent / "taskfiles.py"
    spec = importlib.util.spec_from_file_location(TASKFILES_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[TASKFILES_MODULE] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from controller import taskfiles
else:
    taskfiles = _load_taskfiles()


def discover(source: Path, tasks_dir: str) -> dict[str, Any]:
    """The discovery document for the tasks under ``source / tasks_dir``."""
    if not source.is_dir():
        return {
            "tasks": [],
            "errors": [
                {
                    "file": None,
                    "type": "FileNotFoundError",
                    "message": f"source directory {str(source)!r} does not exist",
                    "line": None,
                    "traceback": None,
                }
            ],
        }
    os.chdir(source)
    tasks, errors = taskfiles.load_tasks(source, tasks_dir)
    return {
        "tasks": [{"id": task.id, "file": task.file, **task.info} for task in tasks],
        "errors": errors,
    }


USAGE = "usage: discover_main.py --source DIR [--tasks-dir DIR]"


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """``--source DIR`` (required) and ``--tasks-dir DIR`` (default ``tasks``), also as
    ``--name=value``. Not argparse: it and gettext would be the only modules this
    script imports beyond what ``taskfiles`` needs, on every build."""
    options = {"--source": "", "--tasks-dir": "tasks"}
    items = list(argv)
    while items:
        name, sep, value = items.pop(0).partition("=")
        if name not in options:
            raise SystemExit(f"{USAGE}\nunknown argument: {name}")
        if not sep:
            if not items:
                raise SystemExit(f"{USAGE}\n{name} needs a value")
            value = items.pop(0)
        options[name] = value
    if not options["--source"]:
        raise SystemExit(f"{USAGE}\n--source is required")
    return {"source": options["--source"], "tasks_dir": options["--tasks-dir"]}


def wait_for_request() -> list[str] | None:
    """The arguments sent on stdin by the controller; ``None`` at end of file."""
    line = sys.stdin.readline()
    if not line.strip():
        return None
    return [str(item) for item in json.loads(line)["argv"]]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--standby"]:
        request = wait_for_request()
        if request is None:
            return 0
        argv = request
    args = parse_args(argv)
    protocol = taskfiles.divert_stdout()
    document = discover(Path(args["source"]).resolve(), args["tasks_dir"])
    protocol.write(json.dumps(document) + "\n")
    protocol.close()
    return 2 if document["errors"] else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
