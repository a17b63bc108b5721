"""Interpreters started ahead of need: one ready per interpreter and environment.

Starting a Python interpreter and importing what a short-lived script needs costs
~0.1-0.3 s on a loaded 2-core machine, on the critical path of a deploy. A standby has
done that already and waits on stdin for its arguments, so the caller only pays for
the work itself. Two scripts use it: build discovery
(:mod:`controller.builders.standby`) and the worker
(:mod:`controller.runtimes.standby`).

Rules that keep a standby equivalent to a fresh start:

- **Used once.** A standby serves one request (it then imports user code, so it could
  not serve another); the caller asks for a new one for the same key right after, off
  the critical path.
- **Same interpreter, same environment.** It is keyed by the interpreter and the exact
  environment variables it was started with; a request with any other environment
  starts cold. Complete virtualenvs are never modified (see
  :mod:`controller.builders.venv`), so what ``site`` read at start-up is still true.
- **Bounded.** At most ``limit`` keys keep one (least recently used dropped first),
  idle at 0 CPU (blocked on a read).
- **Never outlives its owner.** Its stdin is a pipe from this process: end of file
  (:meth:`StandbyPool.close`, or this process's death, even by SIGKILL) makes it exit.

A standby that died meanwhile is noticed when taken (``poll()``) and reported as none,
so it can cost time, never a start.
"""

from __future__ import annotations

import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

Key = tuple[str, tuple[tuple[str, str], ...]]
Start = Callable[[Path, dict[str, str]], "subprocess.Popen[bytes]"]

STOP_SECONDS = 5.0


class StandbyPool:
    """``start(python, env)`` starts one standby (stdin a pipe); the pool keeps it ready."""

    def __init__(self, start: Start, *, limit: int = 4) -> None:
        self._start = start
        self.limit = limit
        self._ready: OrderedDict[Key, subprocess.Popen[bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    @staticmethod
    def key(python: Path, env: dict[str, str]) -> Key:
        return str(python), tuple(sorted(env.items()))

    def take(self, python: Path, env: dict[str, str]) -> subprocess.Popen[bytes] | None:
        """A ready standby for this interpreter and environment, now the caller's."""
        with self._lock:
            proc = self._ready.pop(self.key(python, env), None)
        if proc is not None and proc.poll() is not None:
            proc.communicate()
            return None
        return proc

    def refill(self, python: Path, env: dict[str, str]) -> None:
        """Start a standby for this interpreter and environment unless one is ready."""
        key = self.key(python, env)
        with self._lock:
            if self._closed or key in self._ready:
                return
            try:
                proc = self._start(python, env)
            except OSError:
                return  # the next start runs cold and says why if it fails too
            self._ready[key] = proc
            evicted = []
            while len(self._ready) > self.limit:
                evicted.append(self._ready.popitem(last=False)[1])
        for old in evicted:
            stop(old)

    def ready(self) -> list[int]:
        """Pids of the standbys waiting now."""
        with self._lock:
            return [proc.pid for proc in self._ready.values()]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            procs = list(self._ready.values())
            self._ready.clear()
        for proc in procs:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End of file on its stdin makes a standby exit at once; killed if it does not."""
    try:
        proc.communicate(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
