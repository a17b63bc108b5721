"""GitHub API calls and rate limits, counted in every process and summed at scrape time.

``slipway serve`` is two processes: GitHub is called mostly by the controller child (the
reporter, the resync, installation tokens) and a little by the web process (sign-in),
while ``GET /metrics`` is answered by the web process only. In-process counters of the
child would never reach the scrape, so each process keeps its counts in memory and,
after each call, rewrites a small JSON file of its own, ``<dir>/<pid>.json`` (atomic
``os.replace``); the scrape sums the counts of all files and takes the newest rate-limit
figure per installation. That is what prometheus_client's multiprocess mode does with
mmap files, without its costs here: that mode must be chosen by an environment variable
before prometheus_client is imported, changes every metric of the process (the web
process's own counters and its ``process_*`` collector included) and needs per-gauge
aggregation modes. A JSON rewrite per call is cheap at GitHub's pace (a few thousand
calls an hour at most, the rate limit sees to that).

The directory (``<data>/metrics/github``) is emptied when ``slipway serve`` starts, so
the counters restart from zero with the server as in-process counters do; the file of a
controller child that died and was restarted stays, so the totals never go down while
the server runs. Labels are bounded: the HTTP method, the status class (``2xx`` … ``5xx``,
``error`` when no answer came) and, for the rate limit, the installation id (``app`` for
calls as the App itself); never a token or a path.

Without a directory (unit tests, ``slipway`` commands) counts stay in memory and the
scrape of this process reports them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from controller.datadir import private_dir

log = logging.getLogger(__name__)

METHODS = frozenset({"GET", "POST", "PATCH", "PUT", "DELETE", "HEAD"})

Calls = dict[tuple[str, str], float]
Limits = dict[str, tuple[float, float]]  # installation -> (remaining, unix time seen)


class Meter:
    """Counts of one process (see the module docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Calls = {}
        self._limits: Limits = {}
        self._dir: Path | None = None

    def start(self, directory: Path, *, clean: bool) -> None:
        """Write to ``directory`` from now on; ``clean`` empties it first (the server)."""
        if clean:
            shutil.rmtree(directory, ignore_errors=True)
        private_dir(directory)
        with self._lock:
            self._dir = directory
            self._calls.clear()
            self._limits.clear()

    def record(
        self,
        method: str,
        status: int | None,
        *,
        installation: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        key = (method.upper() if method.upper() in METHODS else "other", status_class(status))
        remaining = _remaining(headers)
        with self._lock:
            self._calls[key] = self._calls.get(key, 0.0) + 1
            if installation is not None and remaining is not None:
                self._limits[installation] = (remaining, time.time())
            self._flush()

    def _flush(self) -> None:
        if self._dir is None:
            return
        path = self._dir / f"{os.getpid()}.json"
        data = {
            "calls": [[m, s, n] for (m, s), n in self._calls.items()],
            "limits": {i: list(v) for i, v in self._limits.items()},
        }
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("metrics: cannot write the GitHub call counts: %s", type(exc).__name__)

    def totals(self) -> tuple[Calls, dict[str, float]]:
        """Calls by (method, status class) and remaining requests by installation, over
        every process that wrote to the directory (or this one's memory without one)."""
        with self._lock:
            directory = self._dir
            if directory is None:
                return dict(self._calls), {i: v[0] for i, v in self._limits.items()}
        calls: Calls = {}
        limits: Limits = {}
        for path in sorted(directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                for method, status, count in data["calls"]:
                    calls[(str(method), str(status))] = calls.get((method, status), 0.0) + count
                for installation, (remaining, seen) in data["limits"].items():
                    if installation not in limits or seen > limits[installation][1]:
                        limits[installation] = (float(remaining), float(seen))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return calls, {i: v[0] for i, v in limits.items()}


METER = Meter()


def status_class(status: int | None) -> str:
    if status is None or not 100 <= status <= 599:
        return "error"
    return f"{status // 100}xx"


def _remaining(headers: Mapping[str, Any] | None) -> float | None:
    for name, value in (headers or {}).items():
        if name.lower() == "x-ratelimit-remaining":
            with contextlib.suppress(TypeError, ValueError):
                return float(value)
    return None


@contextlib.contextmanager
def metered(
    method: str, *, installation: str | None = None, requester: Any = None
) -> Iterator[None]:
    """Count one PyGithub call that succeeded (``2xx``) or raised (its status, or
    ``error`` without an answer). ``requester``: PyGithub's, whose ``rate_limiting`` holds
    the last answer's ``X-RateLimit-Remaining``. Calls whose status is known (a 304)
    use :meth:`Meter.record` directly."""
    import github  # on first use (see controller.github.client.token_client)

    try:
        yield
    except github.GithubException as exc:
        METER.record(method, exc.status, installation=installation, headers=exc.headers)
        raise
    except Exception:
        METER.record(method, None)
        raise
    remaining = getattr(requester, "rate_limiting", (-1, -1))[0]
    headers = {"x-ratelimit-remaining": remaining} if remaining >= 0 else None
    METER.record(method, 200, installation=installation, headers=headers)
