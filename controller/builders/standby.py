"""Discovery interpreters started ahead of need: one ready per environment.

Discovering a version's tasks (``discover_main.py``) used to start the environment's
interpreter and import what discovery needs (``site`` with the environment's ``.pth``
files, ``json``, ``inspect``, ``pathlib``...) on the deploy's critical path: ~0.1-0.2 s
on a loaded 2-core machine, while importing a small project's task files takes a few
milliseconds. A standby (``discover_main.py --standby``) has done all of that and waits
on stdin for its arguments, so a build only pays for importing the tasks.

Rules that keep a standby equivalent to a fresh run:

- **Used once.** A standby serves one discovery and exits (task modules stay imported,
  so it could not serve another); a new one is started for the same environment right
  after, off the critical path of that discovery.
- **Same interpreter, same environment.** It is keyed by the interpreter and the exact
  environment variables it was started with; a request with any other environment
  starts cold. Complete environments are never modified (see
  :mod:`controller.builders.venv`), so what ``site`` read at start-up is still true.
- **Bounded.** At most ``limit`` environments keep one (least recently used dropped
  first), ~10 MB each, idle at 0 CPU (blocked on a read).
- **Never outlives the controller.** Its stdin is a pipe from the controller: end of file
  (``close()``, or the controller's death, even by SIGKILL) makes it exit without output.

A standby that died meanwhile is noticed when taken (``poll()``) and replaced by a cold
run, so it can cost time, never a build.
"""

from __future__ import annotations

import subprocess
import threading
from collections import OrderedDict
from pathlib import Path

Key = tuple[str, tuple[tuple[str, str], ...]]

STOP_SECONDS = 5.0


class DiscoveryStandby:
    def __init__(self, *, script: Path, cwd: Path, limit: int = 4) -> None:
        self.script = script
        self.cwd = cwd
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
            _reap(proc)
            return None
        return proc

    def refill(self, python: Path, env: dict[str, str]) -> None:
        """Start a standby for this interpreter and environment unless one is ready."""
        key = self.key(python, env)
        with self._lock:
            if self._closed or key in self._ready:
                return
            try:
                proc = subprocess.Popen(
                    [str(python), "-I", "-B", str(self.script), "--standby"],
                    cwd=self.cwd,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            except OSError:
                return  # the next discovery runs cold and says why if it fails too
            self._ready[key] = proc
            evicted = []
            while len(self._ready) > self.limit:
                evicted.append(self._ready.popitem(last=False)[1])
        for old in evicted:
            _stop(old)

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
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End of file on its stdin makes it exit at once; killed if it does not."""
    try:
        proc.communicate(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    proc.communicate()
