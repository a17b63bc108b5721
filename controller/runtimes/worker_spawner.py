"""The spawner: a single-threaded fork of the worker that forks every run.

Part of the worker (see ``worker_main.py``, which loads this file by path; standard
library only). fork() in a multi-threaded process copies locks other threads hold and can
deadlock the child, so the worker forks this process once, while it still has a single
thread, and every run is forked from it. The HTTP thread passes a run's four pipe ends
over a Unix socket (SCM_RIGHTS, one byte ``R`` per run); the spawner forks, writes
``pid N`` on the control pipe and, once it has reaped the child, ``exit CODE``.

Env vars travel as an ``E`` message (an 8-byte length, then JSON) only when they differ
from the last ones sent; the spawner sets them in its own environment, so every run forked
after that inherits them. Runs of one version nearly always see the same variables, so
a run with 500 of them costs no JSON pass and no ``putenv`` in the child.

If the worker dies, the spawner sees its socket close, kills every run's process group and
exits, so no run is orphaned. It ignores SIGINT and SIGTERM: only the worker decides when
runs end.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.taskfiles import LoadedTask

RunChild = Callable[[Sequence[int], "dict[str, LoadedTask]"], Any]


def _serve_spawner(
    sock: socket.socket, tasks: dict[str, LoadedTask], *, run_child: RunChild
) -> None:
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
                    run_child(child_fds, tasks)
                with contextlib.suppress(OSError):
                    os.setpgid(pid, pid)
                for fd in child_fds:
                    os.close(fd)
                report(control, f"pid {pid}\n")
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
            report(control, f"exit {os.waitstatus_to_exitcode(status)}\n")
            os.close(control)


def report(fd: int, line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, line.encode())


class Spawner:
    """The worker's handle on its spawner process."""

    def __init__(
        self,
        tasks: dict[str, LoadedTask],
        *,
        close_in_child: Sequence[Any],
        run_child: RunChild,
    ) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                for stream in close_in_child:
                    stream.close()
                _serve_spawner(theirs, tasks, run_child=run_child)
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
