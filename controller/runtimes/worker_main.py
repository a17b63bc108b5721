"""The per-version worker: imports a version's tasks once, then serves runs over HTTP.

    <venv>/bin/python -I -B worker_main.py --source DIR --tasks-dir tasks \\
        --context-json '{"project": ..., "version": ...}' --host 127.0.0.1 --port 0

The local runtime starts one worker per deployed version, under that version's own
virtualenv, where Slipway is not installed: this script is standard library only and
loads ``controller/taskfiles.py`` by path.

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

The worker is five files, loaded by path (``-I`` keeps the script's directory off
``sys.path``): this one (arguments, readiness, draining), ``worker_http.py`` (the HTTP
server), ``worker_spawner.py``
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
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

EXIT_ERRORS = 3
HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> ModuleType:
    """Import a file by path: ``controller`` is not importable in the version's venv."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from controller import taskfiles
    from controller.runtimes import worker_child as child
    from controller.runtimes import worker_http as http
    from controller.runtimes import worker_runs as runs
    from controller.runtimes import worker_spawner as spawning
    from controller.taskfiles import LoadedTask
else:
    taskfiles = _load("_slipway_taskfiles", HERE.parent / "taskfiles.py")
    child = _load("_slipway_worker_child", HERE / "worker_child.py")
    http = _load("_slipway_worker_http", HERE / "worker_http.py")
    runs = _load("_slipway_worker_runs", HERE / "worker_runs.py")
    spawning = _load("_slipway_worker_spawner", HERE / "worker_spawner.py")
    LoadedTask = taskfiles.LoadedTask

_log = runs.log


# --- the worker -----------------------------------------------------------------------


class Worker:
    """Tasks, spawner, drain state and the in-flight count shared by the HTTP threads."""

    def __init__(
        self,
        *,
        tasks: dict[str, LoadedTask],
        context: dict[str, Any],
        spawner: spawning.Spawner,
    ) -> None:
        self.tasks = tasks
        self.context = context
        self.spawner = spawner
        self.draining = False
        self.in_flight = 0
        self._changed = threading.Condition()

    def admit(self) -> bool:
        with self._changed:
            if self.draining:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def drain(self) -> None:
        """Refuse new runs, then wait until every admitted run has been answered."""
        with self._changed:
            self.draining = True
            while self.in_flight:
                self._changed.wait()

    def health(self) -> tuple[int, dict[str, Any]]:
        body = {
            "status": "draining" if self.draining else "ok",
            "version": self.context.get("version"),
            "version_id": self.context.get("version_id"),
            "pid": os.getpid(),
            "in_flight": self.in_flight,
        }
        return (503 if self.draining else 200), body

    def run(
        self,
        *,
        task: LoadedTask,
        run_id: str,
        payload: Any,
        timeout: float | None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return runs.run_task(
            self.spawner,
            context=self.context,
            task=task,
            run_id=run_id,
            payload=payload,
            timeout=timeout,
            env=env,
        )


# --- main -----------------------------------------------------------------------------


def _context(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _emit(stream: Any, event: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        stream.write(json.dumps(event) + "\n")
        stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve one version's Slipway tasks.")
    parser.add_argument("--source", required=True, help="the version's source tree")
    parser.add_argument("--tasks-dir", default="tasks", help="relative to --source")
    parser.add_argument("--context-json", type=_context, default={}, help="the run context")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--owner", default=None, help="the registry of the runtime that owns this worker: a mark"
    )
    args = parser.parse_args(argv)

    protocol = taskfiles.divert_stdout()
    source = Path(args.source).resolve()
    if not source.is_dir():
        error = {"file": None, "type": "FileNotFoundError", "line": None, "traceback": None}
        error["message"] = f"source directory {str(source)!r} does not exist"
        _emit(protocol, {"event": "error", "errors": [error]})
        return EXIT_ERRORS
    os.chdir(source)
    loaded, errors = taskfiles.load_tasks(source, args.tasks_dir)
    if errors:
        _emit(protocol, {"event": "error", "errors": errors})
        return EXIT_ERRORS
    tasks = {task.id: task for task in loaded}
    if threading.active_count() > 1:
        _log("a task module started a thread at import; forking the spawner anyway")

    sys.stdout.flush()
    sys.stderr.flush()
    spawner = spawning.Spawner(tasks, close_in_child=[protocol], run_child=child.become_run)
    try:
        server_class = http.Server6 if ":" in args.host else http.Server
        server = server_class((args.host, args.port), http.Handler)
    except OSError as exc:
        error = {"file": None, "type": type(exc).__name__, "line": None, "traceback": None}
        error["message"] = f"cannot listen on {args.host}:{args.port}: {exc}"
        _emit(protocol, {"event": "error", "errors": [error]})
        spawner.close()
        return EXIT_ERRORS
    worker = Worker(tasks=tasks, context=args.context_json, spawner=spawner)
    server.worker = worker

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: None)
    spawner.watch(lambda: spawning.report(wake_w, "\0"))
    serving = threading.Thread(target=server.serve_until_stopped, name="http", daemon=True)
    serving.start()

    _emit(
        protocol,
        {
            "event": "ready",
            "port": server.server_address[1],
            "pid": os.getpid(),
            "tasks": list(tasks),
        },
    )
    protocol.close()

    wake = b""
    while not wake:
        wake = os.read(wake_r, 64)
    broken = wake.startswith(b"\0")
    if broken:
        _log(f"the spawner exited with code {spawner.exit_code}; draining and exiting")
    else:
        _log(f"draining on {signal.Signals(wake[0]).name}: {worker.in_flight} run(s) in flight")
    worker.drain()
    server.stop()
    serving.join()
    server.server_close()
    spawner.close()
    signal.set_wakeup_fd(-1)
    os.close(wake_r)
    os.close(wake_w)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
