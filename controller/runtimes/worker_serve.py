"""The worker's own logic: the tasks, the spawner, drain state; readiness and draining.

Part of the worker (see ``worker_main.py``, which loads the worker's files by path, in
order, and then calls :func:`main`; each file finds the ones loaded before it in
``sys.modules``). Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller import taskfiles
    from controller.runtimes import worker_child as child
    from controller.runtimes import worker_http as http
    from controller.runtimes import worker_runs as runs
    from controller.runtimes import worker_spawner as spawning
    from controller.taskfiles import LoadedTask
else:
    taskfiles = sys.modules["_slipway_taskfiles"]
    child = sys.modules["_slipway_worker_child"]
    http = sys.modules["_slipway_worker_http"]
    runs = sys.modules["_slipway_worker_runs"]
    spawning = sys.modules["_slipway_worker_spawner"]
    LoadedTask = taskfiles.LoadedTask

EXIT_ERRORS = 3

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
        body: bytes | None = None,
    ) -> dict[str, Any]:
        return runs.run_task(
            self.spawner,
            context=self.context,
            task=task,
            run_id=run_id,
            payload=payload,
            timeout=timeout,
            env=env,
            body=body,
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


def wait_for_start() -> list[str] | None:
    """A standby's start (``--standby``, see :mod:`controller.runtimes.workers`): one JSON
    line on stdin, ``{"argv": [...], "log": path}``; None at end of file (its owner closed
    the pool, or died). From then on stderr appends to that log and stdin is /dev/null, so
    the worker no longer depends on the process that started it, as a cold start."""
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return None
    request = json.loads(line)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return [str(item) for item in request["argv"]]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--standby" in argv:
        request = wait_for_start()
        if request is None:
            return 0
        argv = request
        sys.argv[1:] = request  # what task code reading sys.argv sees in a cold start
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
    spawner = spawning.Spawner(
        tasks,
        close_in_child=[protocol],
        run_child=functools.partial(child.become_run, context=args.context_json),
    )
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
