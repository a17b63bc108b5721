"""The controller process, supervised by ``slipway serve``.

Webhook intake must answer in milliseconds while routing and builds burn CPU. In one
Python process they share one interpreter lock, and a busy build or routing thread
delays every 202. So ``slipway serve`` runs HTTP (the webhook receiver and its writer, the
API, runs) in its own process and the controller (routing, the deploy pipeline, resync)
in a child process:

* the child is started with ``PR_SET_PDEATHSIG``: if the server dies, even by SIGKILL,
  the child dies with it, and the next start resumes its work from the database;
* the child runs at a lower CPU priority (``nice`` +10, inherited by the git and build
  commands it runs): when both compete for the cores, a webhook's 202 goes first and a
  build waits a little; when the machine is otherwise idle, builds get all of it;
* if the child dies on its own, the server starts it again after a short backoff;
* the server forwards wake-ups (``Queue.notify``) over the child's stdin, one job kind
  per line, so new work starts at once instead of at the next poll;
* the child says it is ready (services started, wake-ups read) on a pipe of its own
  (``--ready-fd``); until then ``/readyz`` answers 503. Being niced, the child can take
  tens of seconds to import and migrate on a busy machine, and a process that merely
  exists routes nothing;
* both share the database, and (local runtime) the worker registry in the data dir:
  a worker one process started is adopted by the other.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
CONTROLLER_NICENESS = 10


def _prepare_child() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.nice(CONTROLLER_NICENESS)


class ControllerProcess:
    def __init__(self, *, log_level: str = "warning") -> None:
        self.log_level = log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._ready: subprocess.Popen[bytes] | None = None  # the child that said so
        self._readers: list[threading.Thread] = []
        self.restarts = 0

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="controller-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        parent = os.getpid()
        ready_read, ready_write = os.pipe()
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "controller.cli",
                    "controller",
                    "--log-level",
                    self.log_level,
                    "--parent",
                    str(parent),
                    "--ready-fd",
                    str(ready_write),
                ],
                stdin=subprocess.PIPE,
                pass_fds=(ready_write,),
                preexec_fn=_prepare_child,
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        self._proc = proc
        reader = threading.Thread(
            target=self._await_ready, args=(proc, ready_read), name="controller-ready", daemon=True
        )
        reader.start()
        self._readers = [t for t in self._readers if t.is_alive()] + [reader]
        log.info("controller process started (pid %s)", proc.pid)

    def _await_ready(self, proc: subprocess.Popen[bytes], fd: int) -> None:
        """Blocks until ``proc`` writes its ready line, or exits (end of file)."""
        try:
            if os.read(fd, 64).startswith(b"ready"):
                self._ready = proc
                log.info("controller process ready (pid %s)", proc.pid)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _watch(self) -> None:
        delay = 1.0
        while not self._stopping.wait(0.5):
            proc = self._proc
            if proc is None or proc.poll() is None:
                continue
            log.error(
                "the controller process exited with %s; starting it again in %.0fs",
                proc.returncode,
                delay,
            )
            if self._stopping.wait(delay):
                return
            with self._lock:
                if not self._stopping.is_set():
                    self._spawn()
                    self.restarts += 1
            delay = min(delay * 2, 30.0)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def ready(self) -> bool:
        """The running child has started its services and reads wake-ups."""
        return self.alive and self._ready is self._proc

    def notify(self, kind: str | None) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return
        with self._lock:
            try:
                proc.stdin.write(f"{kind or '*'}\n".encode())
                proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass

    def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._watcher is not None:
            self._watcher.join(5)
        for reader in self._readers:
            reader.join(5)


def run_controller(services: object, *, parent: int | None, ready_fd: int | None = None) -> None:
    """Main loop of the child: serve jobs until SIGTERM (or the parent is gone).
    ``ready_fd``: where to say ``ready`` once the services run (then it is closed)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    services.start()  # type: ignore[attr-defined]

    def wakeups() -> None:
        # Raw reads of fd 0: a daemon thread blocked inside sys.stdin's buffered reader
        # holds its lock, and interpreter shutdown then aborts ("Fatal Python error:
        # _enter_buffered_busy").
        pending = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(0, 4096):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    kind = line.decode().strip()
                    services.queue.notify(None if kind == "*" else kind)  # type: ignore[attr-defined]
        stop.set()  # stdin closed: the server is gone

    threading.Thread(target=wakeups, name="wakeups", daemon=True).start()
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"ready\n")
        except OSError:
            log.warning("could not tell the server that the controller is ready")
        finally:
            os.close(ready_fd)
    while not stop.wait(1.0):
        if parent is not None and os.getppid() != parent:
            break
    services.stop()  # type: ignore[attr-defined]
