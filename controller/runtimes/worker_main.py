"""The per-version worker: imports a version's tasks once, then serves runs over HTTP.

    <venv>/bin/python -I -B worker_main.py --source DIR --tasks-dir tasks \\
        --context-json '{"project": ..., "version": ...}' --host 127.0.0.1 --port 0

The local runtime starts one worker per deployed version, under that version's own
virtualenv, where Slipway is not installed: this script is standard library only and
loads ``controller/taskfiles.py`` by path.

Standby (``worker_main.py --owner ... --standby``, :class:`controller.runtimes.workers.
WorkerStandby`): the interpreter starts and loads the worker's files (``http.server``,
``argparse``... most of a start), then waits on stdin for one JSON line with the
arguments above and the log to append stderr to, and goes on as a cold start would.

Protocol on stdout: exactly one JSON line, then stdout is closed. Either
``{"event": "ready", "port", "pid", "tasks"}`` once every task imported and the port is
bound, or ``{"event": "error", "errors": [...]}`` and exit code 3. Everything else,
including what task modules print while being imported, goes to stderr.

HTTP (JSON in and out): ``GET /health``, ``GET /tasks``, ``POST /runs``
``{"run_id", "task_id", "payload", "timeout"}`` -> ``{"status", "output", "error",
"logs", "duration_ms", ...}`` with status ``completed``, ``failed`` or ``timed_out``.

Processes::

    worker        main thread waits for signals; one thread per HTTP connection
    └─ spawner    forked once, right after the tasks are imported; single-threaded
       └─ run     one forked child per run, in its own process group

Every run gets its own process, so a task that crashes, calls ``os._exit``, segfaults or
hangs costs that run only, and a run starts from module state fresh from import: nothing
one run changes leaks into the next. The process is forked, not exec'd, because
re-importing the user's code on every run would often cost seconds.

Why a spawner rather than forking from the HTTP threads: fork() in a multi-threaded
process copies locks that other threads hold (the allocator's, a buffered stream's,
logging's) and can deadlock the child; Python 3.12 warns about exactly that with a
DeprecationWarning. The spawner is forked while the worker still has a single thread and
it never starts one, so each run forks from a clean process that already holds the
imported tasks. multiprocessing's "forkserver" does the same but only preloads importable
modules (our task files load by path), and brings pickling and a resource tracker along.

The worker is six files, loaded by path (``-I`` keeps the script's directory off
``sys.path``): this one (the loader), ``worker_serve.py`` (arguments, readiness,
draining), ``worker_http.py`` (the HTTP server), ``worker_spawner.py``
(the spawner and how env vars reach it), ``worker_runs.py`` (one run seen from the HTTP
thread: pipes, logs, time limit) and ``worker_child.py`` (the run's own process).

Idle cost: no thread polls. The accept loop blocks on its socket and a stop pipe, the
spawner on its socket, the main thread on the signal pipe, so an idle worker is not
scheduled at all.

Draining: SIGTERM or SIGINT turns ``/health`` and new ``POST /runs`` into 503; in-flight
runs finish (or time out), then the server closes, the spawner's socket is closed so it
exits, and the worker exits 0. If the worker dies without draining, the spawner sees its
socket close, kills every run's process group and exits, so no run is orphaned. The
spawner and the runs ignore or never see a Ctrl-C sent to the worker's process group:
only the worker decides when runs end.

Start-up cost: with ``-B`` (no bytecode written into the version's artifact, where its
tasks are imported from) every file of the worker used to be compiled at each start:
about a third of a start on a loaded machine. The controller compiles them once into a
cache of its own (:func:`controller.runtimes.workers.compile_worker`, passed as
``SLIPWAY_WORKER_PYCACHE``) and :func:`load` runs that bytecode when its header matches
the source (magic number, mtime, size), as the import system would; otherwise it
compiles the source. ``sys.pycache_prefix`` would do it but moves the standard library's
lookups too. This script, compiled every time, stays small.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import sys
from pathlib import Path
from types import CodeType, ModuleType

HERE = Path(__file__).resolve().parent
FILES = [  # in dependency order; each finds the earlier ones in sys.modules
    ("_slipway_taskfiles", HERE.parent / "taskfiles.py"),
    ("_slipway_worker_child", HERE / "worker_child.py"),
    ("_slipway_worker_http", HERE / "worker_http.py"),
    ("_slipway_worker_runs", HERE / "worker_runs.py"),
    ("_slipway_worker_spawner", HERE / "worker_spawner.py"),
    ("_slipway_worker_serve", HERE / "worker_serve.py"),
]


def cached_name(path: Path) -> str:
    return f"{path.stem}.{sys.implementation.cache_tag}.pyc"


def _code(path: Path, cache: Path | None) -> CodeType:
    source = path.read_bytes()
    if cache is not None:
        try:
            data = (cache / cached_name(path)).read_bytes()
            stat = path.stat()
        except OSError:
            data = b""
        header = (
            importlib.util.MAGIC_NUMBER
            + (0).to_bytes(4, "little")
            + (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
            + (len(source) & 0xFFFFFFFF).to_bytes(4, "little")
            if data
            else b""
        )
        if data and data[:16] == header:
            code = marshal.loads(data[16:])  # noqa: S302 - the controller's private data dir
            if isinstance(code, CodeType):
                return code
    return compile(source, str(path), "exec", dont_inherit=True)


def load() -> ModuleType:
    """Load the worker's files by path (``controller`` is not importable in the version's
    venv); the last one, ``worker_serve``."""
    prefix = os.environ.pop("SLIPWAY_WORKER_PYCACHE", None)
    cache = Path(prefix) if prefix else None
    for name, path in FILES:
        if name not in sys.modules:
            module = ModuleType(name)
            module.__file__ = str(path)
            sys.modules[name] = module
            exec(_code(path, cache), module.__dict__)  # noqa: S102 - an import, by path
    return sys.modules[FILES[-1][0]]


if __name__ == "__main__":
    sys.exit(load().main())
