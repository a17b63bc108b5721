"""One run of a task, seen from the worker's HTTP thread.

Part of the worker (see ``worker_main.py``, which loads this file by path: the worker runs
under the version's own virtualenv, where ``controller`` is not importable, so this module
is standard library only).

:func:`run_task` makes four pipes (request, result, logs, control) and hands the child's
ends to the spawner, whose spare child takes them (``worker_child.py``); then it feeds the
request, multiplexes result, logs and control with a selector and keeps the last 256 KiB
of logs.

Timeout: the smaller of the task's ``max_duration`` and the request's ``timeout``. When
it passes, the run's process group gets SIGTERM, then SIGKILL after a short grace, and
the answer is ``timed_out``. A child that exits without a result is ``failed`` with its
exit code or signal. After every run the group is SIGKILLed, so subprocesses a task left
behind do not outlive it. A run that wrote its result is answered once its logs are read
(the group killed), without waiting for the spawner to reap it and report the exit code
(``exit_code`` is then null): that report is two more wake-ups on a loaded machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.taskfiles import LoadedTask

LOG_LIMIT = 256 * 1024
MAX_RESULT_BYTES = 32 * 1024 * 1024
KILL_GRACE = 2.0
AFTER_EXIT_GRACE = 0.5


def log(message: str) -> None:
    sys.stderr.write(f"slipway-worker[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


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


def run_task(
    spawner: Any,
    *,
    context: dict[str, Any],
    task: LoadedTask,
    run_id: str,
    payload: Any,
    timeout: float | None,
    env: dict[str, str] | None = None,
    body: bytes | None = None,
) -> dict[str, Any]:
    """One run on a child the spawner forks; the answer ``POST /runs`` returns.

    ``body``: the ``POST /runs`` body as received (it holds task id, run id, payload and
    env), passed to the child as is, so a large payload or many variables are not
    encoded again; the child adds the context it inherited."""
    limits = [x for x in (task.info["max_duration"], timeout) if x is not None]
    limit = min(limits) if limits else None
    if body is None:
        body = json.dumps(
            {"task_id": task.id, "run_id": run_id, "payload": payload, "env": env or {}}
        ).encode()
    request = body
    request_r, request_w = os.pipe()
    result_r, result_w = os.pipe()
    log_r, log_w = os.pipe()
    control_r, control_w = os.pipe()
    logs = _Tail(LOG_LIMIT)
    started = time.monotonic()
    try:
        spawner.start([request_r, result_w, log_w, control_w])
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
        log(f"cannot start run {run_id}: {exc}")
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
        "version": context.get("version"),
        "status": answer["status"],
        "output": answer["output"],
        "error": answer["error"],
        "logs": logs.text(),
        "duration_ms": duration_ms,
        "exit_code": outcome.exit_code,
    }
