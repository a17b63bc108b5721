"""The spawner: a single-threaded fork of the worker that forks every run.

Part of the worker (see ``worker_main.py``, which loads this file by path; standard
library only). fork() in a multi-threaded process copies locks other threads hold and can
deadlock the child, so the worker forks this process once, while it still has a single
thread, and every run is forked from it. The HTTP thread passes a run's four pipe ends
over a Unix socket (SCM_RIGHTS, one byte ``R`` per run); the spawner hands the child's
three to its spare, writes ``pid N`` on the control pipe and, once it has reaped the
child, ``exit CODE``.

Fork off the critical path: the spawner keeps one child forked ahead (:class:`_Spare`),
blocked on a socket until a run's fds arrive; the next spare is forked right after the
hand-over, while the run executes. The first run forks for itself, so a worker that never
runs (most previews) costs no third process. A fork of a worker with its tasks imported
cost ~1-3 ms of a ~7 ms run. Isolation is unchanged: every run is still a process of its own,
forked from the spawner, which never runs a task and never changes its own environment
(a run's variables travel in its request and are set by the run's process).

If the worker dies, the spawner sees its socket close, kills every run's process group and
exits (the spare reads EOF and exits), so no run is orphaned. It ignores SIGINT and
SIGTERM: only the worker decides when runs end.
"""

from __future__ import annotations

import contextlib
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
    """The spawner's loop: hand each request to the spare child, fork the next spare,
    report pid and exit code, reap."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    runs: dict[int, int] = {}
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)

    def become_child(inherited: Sequence[Any]) -> None:
        """In a fresh fork: drop what belongs to the spawner."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        selector.close()
        sock.close()
        for item in inherited:
            item.close()
        for fd in (wake_r, wake_w, *runs.values()):
            os.close(fd)

    spare: _Spare | None = None  # the first run forks: a worker never run has no spare
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is not sock:
                    with contextlib.suppress(OSError):
                        os.read(wake_r, 4096)
                    continue
                try:
                    message, fds, _, _ = socket.recv_fds(sock, 1, 4)
                except OSError:
                    message, fds = b"", []
                if not message:
                    return
                if len(fds) != 4:
                    for fd in fds:
                        os.close(fd)
                    continue
                *child_fds, control = fds
                pid = spare.hand(child_fds) if spare is not None else None
                if pid is None:  # the first run, or the spare died: fork now
                    pid = os.fork()
                    if pid == 0:
                        become_child([])
                        os.close(control)
                        run_child(child_fds, tasks)
                with contextlib.suppress(OSError):
                    os.setpgid(pid, pid)
                for fd in child_fds:
                    os.close(fd)
                report(control, f"pid {pid}\n")
                runs[pid] = control
                spare = _Spare.fork(tasks, run_child=run_child, become_child=become_child)
            _reap(runs, block=False)
    finally:
        if spare is not None:
            spare.discard()
        for pid in runs:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        _reap(runs, block=True)


class _Spare:
    """A child forked ahead of its run, blocked until the spawner hands it the run's
    (request, result, log) fds, so a run pays no fork. Each spare serves one run and is
    a fresh fork of the spawner, whose environment and module state runs never touch:
    a run's variables are set by its own process, from its request."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    @classmethod
    def fork(
        cls,
        tasks: dict[str, LoadedTask],
        *,
        run_child: RunChild,
        become_child: Callable[[Sequence[Any]], None],
    ) -> _Spare | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            become_child([ours])
            try:
                message, fds, _, _ = socket.recv_fds(theirs, 1, 3)
            except OSError:
                message, fds = b"", []
            theirs.close()
            if message != b"R" or len(fds) != 3:
                os._exit(0)  # the spawner is gone, or discarded this spare
            run_child(fds, tasks)
        theirs.close()
        return cls(pid, ours)

    def hand(self, fds: Sequence[int]) -> int | None:
        """The spare's pid once it has the run's fds; None if it cannot take them."""
        try:
            socket.send_fds(self.sock, [b"R"], list(fds))
        except OSError:
            self.discard()
            return None
        self.sock.close()
        return self.pid

    def discard(self) -> None:
        self.sock.close()  # the spare reads EOF and exits
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


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

    def start(self, fds: Sequence[int]) -> None:
        """Ask for a run child with these (request, result, log, control) fds."""
        with self._lock:
            socket.send_fds(self._sock, [b"R"], list(fds))

    def close(self, timeout: float = 10.0) -> None:
        self._closing = True
        self._sock.close()
        if not self._exited.wait(timeout):
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            self._exited.wait(timeout)
