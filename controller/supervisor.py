"""The controller process, supervised by ``slipway serve``.

Webhook intake must answer in milliseconds while routing and builds burn CPU. In one
Python process they share one interpreter lock, and a busy build or routing thread
delays every 202. So ``slipway serve`` runs HTTP (the webhook receiver and its writer, the
API, runs) in its own process and the controller (routing, the deploy pipeline, resync)
in a child process:

* the child is started with ``PR_SET_PDEATHSIG``: if the server dies, even by SIGKILL,
  the child dies with it, and the next start resumes its work from the database;
* the child has a process group of its own, so a Ctrl-C in the terminal reaches only the
  server, which decides when the controller stops (after the runs' grace period);
* the child runs at a lower CPU priority (``nice`` +10, inherited by the git and build
  commands it runs): when both compete for the cores, a webhook's 202 goes first and a
  build waits a little; when the machine is otherwise idle, builds get all of it. A
  lower priority alone does not keep the 202s as fast as on an idle server on a 2-core
  machine; ``SLIPWAY_CONTROLLER_CPUS=auto`` also keeps the child off the first CPU (see
  :mod:`controller.cpus`; it confines itself first thing);
* if the child dies on its own, the server starts it again after a short backoff (a
  controller that lost leadership exits so, and comes back as a candidate);
* the server forwards wake-ups (``Queue.notify``) as datagrams beside the control
  channel (:mod:`controller.runtimes.control`), so new work starts at once instead of at
  the next poll, and sending one never waits for the niced controller. They used to go
  over the child's stdin, read by a daemon thread that was still blocked in ``read`` at
  interpreter exit and aborted it (``_enter_buffered_busy``); the child's stdin is now
  ``/dev/null``;
* both share the database; only the child owns worker processes, and the server reaches
  them through the control channel.

Graceful stop (SIGTERM or SIGINT to ``slipway serve``):

1. uvicorn stops accepting connections; requests in flight (runs) get up to
   ``SLIPWAY_SHUTDOWN_GRACE_PERIOD`` (30 s) to finish;
2. the server's runtime refuses new runs, and the server sends SIGTERM to the child;
3. the child stops the control channel, sets ``stopping`` (builds stop between steps and
   resume on the next start), gives workers a short drain (SIGTERM), then kills each
   worker's whole session — runs included — and every worker of the data dir that no
   record names; it joins every thread and exits 0;
4. runs cut off by step 3 come back to the server as failures that say the shutdown
   grace period ran out, and are recorded so, before the database is closed.
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
from collections.abc import Callable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
CONTROLLER_NICENESS = 10
EXIT_LOST_LEADERSHIP = 75  # EX_TEMPFAIL: the supervisor starts the controller again


def _prepare_child() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.nice(CONTROLLER_NICENESS)


class ControllerProcess:
    def __init__(
        self, *, log_level: str = "warning", notify: Callable[[str | None], None] | None = None
    ) -> None:
        self.log_level = log_level
        self._notify = notify
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="controller-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        parent = os.getpid()
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.child",  # not through the CLI: see controller.child
                "--log-level",
                self.log_level,
                "--parent",
                str(parent),
            ],
            stdin=subprocess.DEVNULL,
            preexec_fn=_prepare_child,
        )
        log.info("controller process started (pid %s)", self._proc.pid)

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

    def notify(self, kind: str | None) -> None:
        """Pass a wake-up on to the child (a datagram: the caller, the webhook writer
        among them, never waits for the niced controller; one sent while the child is
        being restarted is lost, as its work is picked up when it starts)."""
        if self._notify is not None:
            self._notify(kind)

    def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is None:
            return
        with self._lock:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.error(
                        "the controller process did not stop within %.0fs; killing it", timeout
                    )
                    proc.kill()
                    proc.wait()
        if proc.returncode != 0:
            log.error("the controller process exited with %s on stop", proc.returncode)
        if self._watcher is not None:
            self._watcher.join(5)


def run_controller(services: object, *, parent: int | None) -> None:
    """Main loop of the child: serve jobs until SIGTERM (or the parent is gone)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    services.start()  # type: ignore[attr-defined]
    try:
        while not stop.wait(1.0):
            if parent is not None and os.getppid() != parent:
                break
            if getattr(services, "lost_leadership", False):
                break
    finally:
        services.stop()  # type: ignore[attr-defined]
    leftover = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    if leftover:
        log.error("threads still running at exit: %s", ", ".join(leftover))
    if getattr(services, "lost_leadership", False):
        # Start again as a candidate, from a clean slate (see controller.leadership).
        log.warning("the controller exits after losing leadership; it restarts as a follower")
        raise SystemExit(EXIT_LOST_LEADERSHIP)
