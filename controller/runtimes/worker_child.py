"""A run's own process: forked by the spawner ahead of its run, it runs one task and leaves.

Part of the worker (see ``worker_main.py``, which loads this file by path; standard
library only). :func:`become_run` puts the child in a process group of its own, points
fds 0-2 at /dev/null and the log pipe (so ``print`` and subprocesses alike are captured),
reads its request, sets the run's variables in its own environment, runs the task and writes one JSON result, then leaves with
``os._exit``. Every run gets a process of its own, so a task that crashes, calls
``os._exit``, segfaults or hangs costs that run only, and each run starts from module
state fresh from import. ``asyncio`` is imported only by a run whose task is async.
"""

from __future__ import annotations

import collections.abc
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from controller.taskfiles import LoadedTask


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


def _close_log() -> None:
    """Flush and close this process's ends of the log pipe before the result is written:
    the worker reads the logs to their end of file, and a process's descriptors would
    otherwise close only once the kernel has torn its memory down (~1 ms for a fork of a
    worker with its tasks imported), after ``os._exit``."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.close(fd)


def become_run(
    fds: Sequence[int], tasks: dict[str, LoadedTask], *, context: dict[str, Any] | None = None
) -> NoReturn:
    """The run child, once it has its run's fds. Never returns. ``context``: the worker's
    run context (version, environment…), inherited, not sent with every request."""
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
        os.environ.update(request.get("env") or {})
        request["context"] = context or {}
        result = _execute(tasks[request["task_id"]], request)
        _close_log()
        with open(result_fd, "w", encoding="utf-8") as stream:
            stream.write(result)
        code = 0
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
            sys.stderr.flush()
    finally:
        os._exit(code)
