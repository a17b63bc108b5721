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

One run: the HTTP thread makes four pipes (request, result, logs, control) and passes
the child's ends to the spawner over a Unix socket (SCM_RIGHTS, one byte per run). The
spawner forks, puts the child in a process group of its own, writes ``pid N`` on the
control pipe and, once it has reaped the child, ``exit CODE``. The child reads its
request, runs the task with fds 1 and 2 on the log pipe (so ``print`` and subprocesses
alike are captured), writes one JSON result and leaves with ``os._exit``. The HTTP
thread multiplexes the four pipes with a selector and keeps the last 256 KiB of logs.

A run's env vars: the HTTP thread sends them to the spawner (an ``E`` message, JSON)
only when they differ from the last ones it sent; the spawner sets them in its own
environment, so every run forked after that inherits them. Runs of one version nearly
always see the same variables, so a run with 500 of them costs no JSON pass and no
``putenv`` in the child (the env var benchmark's 500-vs-0 gap was mostly that).

Idle cost: no thread polls. The accept loop blocks on its socket and a stop pipe, the
spawner on its socket, the main thread on the signal pipe, so an idle worker is not
scheduled at all. ``asyncio`` is imported only by a run whose task is async.

Timeout: the smaller of the task's ``max_duration`` and the request's ``timeout``. When
it passes, the run's process group gets SIGTERM, then SIGKILL after a short grace, and
the answer is ``timed_out``. A child that exits without a result is ``failed`` with its
exit code or signal. After every run the group is SIGKILLed, so subprocesses a task left
behind do not outlive it. A run that wrote its result is answered once its logs are read
(the group killed), without waiting for the spawner to reap it and report the exit code
(``exit_code`` is then null): that report is two more wake-ups on a loaded machine.

Draining: SIGTERM or SIGINT turns ``/health`` and new ``POST /runs`` into 503; in-flight
runs finish (or time out), then the server closes, the spawner's socket is closed so it
exits, and the worker exits 0. If the worker dies without draining, the spawner sees its
socket close, kills every run's process group and exits, so no run is orphaned. The
spawner and the runs ignore or never see a Ctrl-C sent to the worker's process group:
only the worker decides when runs end.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import importlib.util
import json
import os
import secrets
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

TASKFILES_MODULE = "_slipway_taskfiles"
LOG_LIMIT = 256 * 1024
MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_RESULT_BYTES = 32 * 1024 * 1024
KILL_GRACE = 2.0
AFTER_EXIT_GRACE = 0.5
EXIT_ERRORS = 3


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
    from controller.taskfiles import LoadedTask
else:
    taskfiles = _load_taskfiles()
    LoadedTask = taskfiles.LoadedTask


def _log(message: str) -> None:
    sys.stderr.write(f"slipway-worker[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


# --- what a run sees ------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """``ctx`` in ``run(payload, ctx)``: read ``ctx.version`` or ``ctx["version"]``."""

    task_id: str
    run_id: str
    project: str | None = None
    environment: str | None = None
    branch: str | None = None
    version: str | None = None
    version_id: int | None = None
    deployment_id: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.__dataclass_fields__

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self) -> list[str]:
        return list(self.__dataclass_fields__)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CONTEXT_KEYS = ("project", "environment", "branch", "version", "version_id", "deployment_id")


def _execute(task: LoadedTask, request: dict[str, Any]) -> str:
    """Run one task in this (child) process; the result as a JSON document."""
    context = request.get("context") or {}
    ctx = RunContext(
        task_id=task.id,
        run_id=str(request.get("run_id") or ""),
        env=dict(os.environ),
        **{key: context.get(key) for key in CONTEXT_KEYS},
    )
    try:
        value = task.module.run(request.get("payload"), ctx)
        if isinstance(value, collections.abc.Awaitable):
            import asyncio  # only async tasks pay for it (about 10 ms and 4 MB)

            value = asyncio.run(_awaited(value))
    except BaseException as exc:
        return json.dumps({"status": "failed", "output": None, "error": _error_of(exc)})
    try:
        return json.dumps({"status": "completed", "output": value, "error": None}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        message = f"the output of task {task.id!r} is not JSON-serialisable: {exc}"
        return json.dumps(
            {
                "status": "failed",
                "output": None,
                "error": {"type": "TypeError", "message": message, "stack": None},
            }
        )


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _error_of(exc: BaseException) -> dict[str, Any]:
    tb = exc.__traceback__
    shown = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    return {
        "type": type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "stack": "".join(traceback.format_exception(type(exc), exc, shown)),
    }


def _become_run(fds: Sequence[int], tasks: dict[str, LoadedTask]) -> NoReturn:
    """The run child, right after the spawner forked it. Never returns."""
    code = 70
    try:
        request_fd, result_fd, log_fd = fds
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        sys.stdout = open(  # noqa: SIM115 - lives until os._exit
            1, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
        )
        sys.stderr = open(  # noqa: SIM115 - lives until os._exit
            2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
        )
        with open(request_fd, "rb") as stream:
            request = json.loads(stream.read())
        result = _execute(tasks[request["task_id"]], request)
        sys.stdout.flush()
        sys.stderr.flush()
        with open(result_fd, "w", encoding="utf-8") as stream:
            stream.write(result)
        code = 0
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
            sys.stderr.flush()
    finally:
        os._exit(code)


# --- the spawner ----------------------------------------------------------------------


def _serve_spawner(sock: socket.socket, tasks: dict[str, LoadedTask]) -> None:
    """The spawner's loop: fork a run per request, report pid and exit code, reap."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    runs: dict[int, int] = {}
    base_env = dict(os.environ)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is not sock:
                    with contextlib.suppress(OSError):
                        os.read(wake_r, 4096)
                    continue
                try:
                    message, fds, _, _ = socket.recv_fds(sock, 1, 4)
                    if message == b"E":
                        _apply_env(_receive_env(sock), base=base_env)
                        continue
                except OSError:
                    message, fds = b"", []
                if not message:
                    return
                if len(fds) != 4:
                    for fd in fds:
                        os.close(fd)
                    continue
                *child_fds, control = fds
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    for signum in (signal.SIGCHLD, signal.SIGTERM):
                        signal.signal(signum, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    selector.close()
                    sock.close()
                    for fd in (wake_r, wake_w, control, *runs.values()):
                        os.close(fd)
                    _become_run(child_fds, tasks)
                with contextlib.suppress(OSError):
                    os.setpgid(pid, pid)
                for fd in child_fds:
                    os.close(fd)
                _report(control, f"pid {pid}\n")
                runs[pid] = control
            _reap(runs, block=False)
    finally:
        for pid in runs:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        _reap(runs, block=True)


def _receive_env(sock: socket.socket) -> dict[str, str]:
    """The rest of an ``E`` message: an 8-byte length, then that much JSON. Reads exactly
    that many bytes, so the next message's byte (and the fds riding on it) stay queued."""

    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise OSError("the worker closed the spawner's socket mid-message")
            data += chunk
        return data

    env = json.loads(exactly(int.from_bytes(exactly(8), "big")))
    assert isinstance(env, dict)
    return env


def _apply_env(env: dict[str, str], *, base: dict[str, str]) -> None:
    """Make the spawner's environment ``base`` plus ``env``; runs forked later inherit it,
    so a run pays nothing for its variables while they stay the same."""
    for name in [n for n in os.environ if n not in env and os.environ[n] != base.get(n)]:
        if name in base:
            os.environ[name] = base[name]
        else:
            del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _reap(runs: dict[int, int], *, block: bool) -> None:
    while runs:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control = runs.pop(pid, None)
        if control is not None:
            _report(control, f"exit {os.waitstatus_to_exitcode(status)}\n")
            os.close(control)


def _report(fd: int, line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, line.encode())


class Spawner:
    """The worker's handle on its spawner process."""

    def __init__(self, tasks: dict[str, LoadedTask], *, close_in_child: Sequence[Any]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                for stream in close_in_child:
                    stream.close()
                _serve_spawner(theirs, tasks)
            except BaseException:
                code = 70
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self.exit_code: int | None = None
        self._sock = ours
        self._env: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._exited = threading.Event()

    def watch(self, on_exit: Any) -> threading.Thread:
        """Reap the spawner in a thread; ``on_exit()`` if it dies before :meth:`close`."""

        def wait() -> None:
            _, status = os.waitpid(self.pid, 0)
            self.exit_code = os.waitstatus_to_exitcode(status)
            self._exited.set()
            if not self._closing:
                on_exit()

        thread = threading.Thread(target=wait, name="spawner-reaper", daemon=True)
        thread.start()
        return thread

    def start(self, fds: Sequence[int], *, env: dict[str, str]) -> None:
        """Ask for a run child with these (request, result, log, control) fds and ``env``
        in its environment. The spawner keeps the last ``env`` it was sent, so the
        variables cross (and are set) once per change, not once per run."""
        with self._lock:
            if env != self._env:
                data = json.dumps(env).encode()
                self._sock.sendall(b"E" + len(data).to_bytes(8, "big") + data)
                self._env = dict(env)
            socket.send_fds(self._sock, [b"R"], list(fds))

    def close(self, timeout: float = 10.0) -> None:
        self._closing = True
        self._sock.close()
        if not self._exited.wait(timeout):
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            self._exited.wait(timeout)


# --- one run, seen from the HTTP thread -----------------------------------------------


class _Tail:
    """The last ``limit`` bytes written, and how many there were in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._data += chunk
        if len(self._data) > 2 * self.limit:
            del self._data[: -self.limit]

    def text(self) -> str:
        text = bytes(self._data[-self.limit :]).decode("utf-8", errors="replace")
        if self.total > self.limit:
            return (
                f"[slipway: logs truncated, showing the last {self.limit} of "
                f"{self.total} bytes]\n{text}"
            )
        return text


@dataclass
class _Outcome:
    result: bytes = b""
    result_too_large: bool = False
    result_done: bool = False  # the child wrote its result and closed the pipe
    exit_code: int | None = None
    timed_out: bool = False
    spawner_lost: bool = False


def _supervise(
    *,
    request: bytes,
    request_fd: int,
    result_fd: int,
    log_fd: int,
    control_fd: int,
    limit: float | None,
    logs: _Tail,
) -> _Outcome:
    """Feed the request, collect result and logs, enforce the time limit, await the exit."""
    outcome = _Outcome()
    result = bytearray()
    pending = memoryview(request)
    control = b""
    pid: int | None = None
    started = time.monotonic()
    deadline = started + limit if limit is not None else None
    term_sent: float | None = None
    kill_sent = False
    finish_by: float | None = None

    def signal_group(signum: int) -> None:
        if pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(pid, signum)

    os.set_blocking(request_fd, False)
    selector = selectors.DefaultSelector()
    selector.register(request_fd, selectors.EVENT_WRITE, "request")
    selector.register(result_fd, selectors.EVENT_READ, "result")
    selector.register(log_fd, selectors.EVENT_READ, "log")
    selector.register(control_fd, selectors.EVENT_READ, "control")
    try:
        while True:
            now = time.monotonic()
            answered = outcome.result_done and pid is not None
            if outcome.exit_code is None and not outcome.spawner_lost and not answered:
                if deadline is not None and now >= deadline:
                    outcome.timed_out = True
                if outcome.timed_out and pid is not None:
                    if term_sent is None:
                        signal_group(signal.SIGTERM)
                        term_sent = now
                    elif not kill_sent and now >= term_sent + KILL_GRACE:
                        signal_group(signal.SIGKILL)
                        kill_sent = True
            elif finish_by is None:
                signal_group(signal.SIGKILL)
                finish_by = now + AFTER_EXIT_GRACE
            readers = [
                k
                for k in selector.get_map().values()
                if k.data != "request" and not (answered and k.data == "control")
            ]
            if finish_by is not None and (now >= finish_by or not readers):
                break

            waits = [
                moment - now
                for moment in (
                    deadline if not outcome.timed_out else None,
                    term_sent + KILL_GRACE if term_sent is not None and not kill_sent else None,
                    finish_by,
                )
                if moment is not None
            ]
            for key, _ in selector.select(max(0.0, min(waits)) if waits else None):
                fd = key.fd
                if key.data == "request":
                    try:
                        pending = pending[os.write(fd, pending) :]
                    except BlockingIOError:
                        continue
                    except OSError:
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(fd)
                        os.close(fd)
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    selector.unregister(fd)
                    os.close(fd)
                    if key.data == "control" and outcome.exit_code is None:
                        outcome.spawner_lost = True
                    if key.data == "result" and (result or outcome.result_too_large):
                        outcome.result_done = True
                    continue
                if key.data == "log":
                    logs.write(chunk)
                elif key.data == "result":
                    if len(result) + len(chunk) > MAX_RESULT_BYTES:
                        outcome.result_too_large = True
                    else:
                        result += chunk
                else:
                    control += chunk
                    while b"\n" in control:
                        line, control = control.split(b"\n", 1)
                        word, _, number = line.decode().partition(" ")
                        if word == "pid":
                            pid = int(number)
                        elif word == "exit":
                            outcome.exit_code = int(number)
    finally:
        for key in list(selector.get_map().values()):
            selector.unregister(key.fd)
            os.close(key.fd)
        selector.close()
    outcome.result = bytes(result)
    return outcome


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "the run's process was lost: the worker's spawner exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the run's process was killed by {name} before returning a result"
    return f"the run's process exited with code {code} before returning a result"


# --- the worker -----------------------------------------------------------------------


class Worker:
    """Tasks, spawner, drain state and the in-flight count shared by the HTTP threads."""

    def __init__(
        self,
        *,
        tasks: dict[str, LoadedTask],
        context: dict[str, Any],
        spawner: Spawner,
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
        limits = [x for x in (task.info["max_duration"], timeout) if x is not None]
        limit = min(limits) if limits else None
        request = json.dumps(
            {
                "task_id": task.id,
                "run_id": run_id,
                "payload": payload,
                "context": self.context,
            }
        ).encode()
        request_r, request_w = os.pipe()
        result_r, result_w = os.pipe()
        log_r, log_w = os.pipe()
        control_r, control_w = os.pipe()
        logs = _Tail(LOG_LIMIT)
        started = time.monotonic()
        try:
            self.spawner.start([request_r, result_w, log_w, control_w], env=env or {})
        except OSError as exc:
            for fd in (
                request_r,
                request_w,
                result_r,
                result_w,
                log_r,
                log_w,
                control_r,
                control_w,
            ):
                os.close(fd)
            outcome = _Outcome(spawner_lost=True)
            _log(f"cannot start run {run_id}: {exc}")
        else:
            for fd in (request_r, result_w, log_w, control_w):
                os.close(fd)
            outcome = _supervise(
                request=request,
                request_fd=request_w,
                result_fd=result_r,
                log_fd=log_r,
                control_fd=control_r,
                limit=limit,
                logs=logs,
            )
        duration_ms = round((time.monotonic() - started) * 1000, 3)

        answer: dict[str, Any] | None = None
        if outcome.result and not outcome.result_too_large:
            with contextlib.suppress(ValueError):
                answer = json.loads(outcome.result)
        if answer is None:
            if outcome.result_too_large:
                error = {
                    "type": "OutputTooLarge",
                    "message": f"the run's output is larger than {MAX_RESULT_BYTES} bytes",
                }
                status = "failed"
            elif outcome.timed_out:
                error = {
                    "type": "TimeoutError",
                    "message": f"the run exceeded its time limit of {limit:g}s and was killed",
                }
                status = "timed_out"
            else:
                error = {"type": "ProcessExited", "message": _exit_reason(outcome.exit_code)}
                status = "failed"
            answer = {"status": status, "output": None, "error": {**error, "stack": None}}
        return {
            "run_id": run_id,
            "task_id": task.id,
            "version": self.context.get("version"),
            "status": answer["status"],
            "output": answer["output"],
            "error": answer["error"],
            "logs": logs.text(),
            "duration_ms": duration_ms,
            "exit_code": outcome.exit_code,
        }


class _Server(ThreadingHTTPServer):
    """``serve_forever`` wakes every ``poll_interval`` to look at a flag (10 wake-ups a
    second per idle worker at 0.1 s); this loop blocks on the listening socket and a
    stop pipe with no timeout, so an idle worker does not run at all."""

    daemon_threads = True
    worker: Worker

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._stop_r, self._stop_w = os.pipe()

    def serve_until_stopped(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is not self:
                        return
                self.handle_request()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "slipway-worker"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        worker = self.server.worker
        if path == "/health":
            self._send(*worker.health())
        elif path == "/tasks":
            tasks = [
                {"id": task.id, "file": task.file, **task.info} for task in worker.tasks.values()
            ]
            self._send(200, tasks)
        else:
            self._send(404, {"error": f"no such path: {path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path != "/runs":
            self._send(404, {"error": f"no such path: {path}"})
            return
        request = self._read_json()
        if request is None:
            return
        worker = self.server.worker
        if worker.draining:
            self._send(503, {"error": "the worker is draining and accepts no new runs"})
            return
        task_id = request.get("task_id")
        run_id = request.get("run_id") or f"run_{secrets.token_hex(8)}"
        timeout = request.get("timeout")
        if not isinstance(task_id, str) or not isinstance(run_id, str):
            self._send(400, {"error": "task_id and run_id must be strings"})
            return
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            self._send(400, {"error": "timeout must be a positive number of seconds or null"})
            return
        env = request.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            self._send(400, {"error": "env must be an object of strings"})
            return
        task = worker.tasks.get(task_id)
        if task is None:
            self._send(404, {"error": f"unknown task {task_id!r} in this version"})
            return
        if not worker.admit():
            self._send(503, {"error": "the worker is draining and accepts no new runs"})
            return
        try:
            result = worker.run(
                task=task, run_id=run_id, payload=request.get("payload"), timeout=timeout, env=env
            )
            self._send(200, result)
        finally:
            worker.release()

    def _read_json(self) -> dict[str, Any] | None:
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._send(411, {"error": "a Content-Length header is required"}, close=True)
            return None
        length = int(length_header)
        if length > MAX_REQUEST_BYTES:
            self._send(413, {"error": f"body over {MAX_REQUEST_BYTES} bytes"}, close=True)
            return None
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            self._send(400, {"error": "the body is not JSON"})
            return None
        if not isinstance(body, dict):
            self._send(400, {"error": "the body must be a JSON object"})
            return None
        return body

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body: Any, *, close: bool = False) -> None:
        """One write per answer: headers and body in a single segment, so a reused
        connection never waits on Nagle against the client's delayed ACK."""
        data = json.dumps(body).encode()
        closing = close or self.server.worker.draining
        head = [
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
            f"Server: {self.server_version}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
        ]
        if closing:
            head.append("Connection: close")
            self.close_connection = True
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
            self.wfile.flush()
        except ConnectionError:
            self.close_connection = True
            _log(f"{self.command} {self.path}: the client went away before the {status} answer")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        _log(format % args)


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
    spawner = Spawner(tasks, close_in_child=[protocol])
    try:
        server_class = _Server6 if ":" in args.host else _Server
        server = server_class((args.host, args.port), _Handler)
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
    spawner.watch(lambda: _report(wake_w, "\0"))
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
