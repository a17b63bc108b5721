"""The local runtime: one worker process per live version, on this machine.

A worker (``worker_main.py``, run by the version's own virtualenv Python) imports the
version's tasks once, then serves runs over HTTP on 127.0.0.1, each run in a child
process of its own. Workers start in their own session, so a controller killed with
SIGKILL leaves them running; each worker is recorded in ``<data>/workers/<id>.json`` and
a restarted controller adopts it after checking its pid and ``/health`` (which reports
the version id, guarding against pid reuse).

Exactly one process owns workers: the controller (see :mod:`controller.runtimes.control`
for how the web process reaches them). Every start goes through the version's lock, and
under that lock ``may_start`` re-reads the version's state (archived preview, project
disconnected) so a worker is never started for a version that was retired for good. A
run takes a lease (:meth:`LocalRuntime.acquire`) under the same lock, so a retire waits
for the runs it was handed.

Every worker carries ``--owner <data>/workers`` on its command line, and so do its
spawner and runs (they are forks of it). That mark finds workers no record names (a
controller SIGKILLed between starting a worker and recording it, or a record
overwritten): :meth:`LocalRuntime.stop_strays` stops them when a controller starts, and
:meth:`LocalRuntime.close` sweeps them at a graceful stop.

Stopping a worker: SIGTERM makes it refuse new runs and finish in-flight ones, then exit;
after the deadline its whole session gets SIGKILL — worker, spawner and every run (runs
sit in process groups of their own but stay in the worker's session), so no run is
orphaned. Retiring does this in a reaper thread with a long deadline; :meth:`close` with
a short one (the web process already gave runs their shutdown grace period).

This module is over 400 lines on purpose: starting, adopting, leasing and stopping share
one set of per-version locks and one registry, and their invariants read best together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.datadir import open_private, private_dir, write_private
from controller.errors import PermanentError, RuntimeUnavailable
from controller.runtimes.base import VersionSpec, host_paths
from controller.runtimes.procs import kill_session, session_of, workers_marked

log = logging.getLogger(__name__)

WORKER_MAIN = Path(__file__).with_name("worker_main.py")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class _Worker:
    version_id: int
    pid: int
    port: int
    proc: subprocess.Popen[bytes] | None = None
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    preview: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gone(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        return session_of(self.pid) is None  # gone, or a zombie its parent has to reap


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def post_run(
    client: httpx.Client,
    url: str,
    *,
    run_id: str,
    task_id: str,
    payload: Any,
    timeout: float | None,
    env: dict[str, str] | None = None,
) -> httpx.Response:
    request = {"run_id": run_id, "task_id": task_id, "payload": payload, "timeout": timeout}
    if env:
        request["env"] = env
    return client.post(
        url + "/runs",
        json=request,
        timeout=httpx.Timeout(5.0, read=(timeout or 24 * 3600) + 60),
    )


def answer_of(response: httpx.Response, *, spec: VersionSpec, task_id: str) -> dict[str, Any]:
    if response.status_code == 404:
        raise PermanentError(f"task {task_id!r} does not exist in version {spec.version}")
    if response.status_code != 200:
        raise RuntimeUnavailable(
            f"the worker answered {response.status_code}: {response.text[:300]}"
        )
    return dict(response.json())


class LocalRuntime:
    name = "local"

    def __init__(
        self,
        *,
        data_dir: Path,
        start_timeout: float = 60.0,
        drain_timeout: float = 3600.0,
        may_start: Callable[[int], str | None] | None = None,
        preview_idle_timeout: float = 600.0,
        max_live_previews: int = 50,
    ) -> None:
        self.registry = data_dir / "workers"
        self.logs = data_dir / "logs" / "workers"
        self.home = data_dir / "home"
        for path in (self.registry, self.logs, self.home):
            private_dir(path)
        self.start_timeout = start_timeout
        self.drain_timeout = drain_timeout
        self.may_start = may_start
        self.preview_idle_timeout = preview_idle_timeout
        self.max_live_previews = max_live_previews
        self._workers: dict[int, _Worker] = {}
        self._retiring: dict[int, _Worker] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=httpx.Timeout(5.0), trust_env=False)
        self._reapers: list[threading.Thread] = []
        self._closing = threading.Event()
        self._close_by = float("inf")

    # -- lifecycle ------------------------------------------------------------------------

    def _version_lock(self, version_id: int) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(version_id, threading.Lock())

    def ensure(self, spec: VersionSpec) -> None:
        with self._version_lock(spec.version_id):
            serving = spec.version_id in self._workers
            self._ensure_locked(spec, check=True)
        if not serving:
            self.stop_previews_over_cap(keep=spec.version_id)

    def _ensure_locked(self, spec: VersionSpec, *, check: bool) -> _Worker:
        """``check``: health-check a worker we already have (the resync does); a run
        does not: its request failing to connect is the health signal (see :meth:`run`)."""
        if self._closing.is_set():
            raise RuntimeUnavailable("the controller is stopping and starts no worker")
        worker = self._workers.get(spec.version_id)
        alive = worker is not None and not worker.gone()
        if worker is not None and alive and (not check or self._healthy(worker, spec.version_id)):
            return worker
        if worker is not None:
            self._forget(spec.version_id)
        refusal = self.may_start(spec.version_id) if self.may_start is not None else None
        if refusal:
            raise PermanentError(f"version {spec.version} is not started: {refusal}")
        adopted = self._adopt(spec.version_id)
        worker = adopted if adopted is not None else self._start(spec)
        worker.preview = spec.context.get("environment") == "preview"
        self._workers[spec.version_id] = worker
        return worker

    def _healthy(self, worker: _Worker, version_id: int) -> bool:
        if worker.proc is not None and worker.proc.poll() is not None:
            return False
        try:
            response = self._client.get(worker.url + "/health", timeout=3.0)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return False
        return response.status_code == 200 and body.get("version_id") == version_id

    def _record(self, version_id: int) -> dict[str, Any] | None:
        try:
            record = json.loads((self.registry / f"{version_id}.json").read_text())
            return {"pid": int(record["pid"]), "port": int(record["port"])}
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def _adopt(self, version_id: int) -> _Worker | None:
        record = self._record(version_id)
        if record is None:
            return None
        worker = _Worker(version_id=version_id, pid=record["pid"], port=record["port"])
        if _pid_alive(worker.pid) and self._healthy(worker, version_id):
            log.info("adopted the running worker of version id %s (pid %s)", version_id, worker.pid)
            return worker
        (self.registry / f"{version_id}.json").unlink(missing_ok=True)
        if worker.pid in self.owned_sessions():
            self._terminate(worker, wait=5.0)  # recorded but unhealthy: it is replaced
        return None

    def _start(self, spec: VersionSpec) -> _Worker:
        source, venv = host_paths(spec.artifact)
        if not (venv / "bin" / "python").exists():
            raise PermanentError(f"the environment of version {spec.version} is missing: {venv}")
        env = {
            "PATH": f"{venv / 'bin'}:{SYSTEM_PATH}",
            "HOME": str(self.home),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "VIRTUAL_ENV": str(venv),
            "PYTHONUNBUFFERED": "1",
            **spec.env,
        }
        context = {**spec.context, "version": spec.version, "version_id": spec.version_id}
        log_path = self.logs / f"{spec.version_id}.log"
        stderr = open_private(log_path, "ab")  # handed to the child
        try:
            proc = subprocess.Popen(
                [
                    str(venv / "bin" / "python"),
                    "-I",
                    "-B",
                    str(WORKER_MAIN),
                    "--source",
                    str(source),
                    "--tasks-dir",
                    spec.tasks_dir,
                    "--context-json",
                    json.dumps(context),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--owner",
                    str(self.registry),
                ],
                cwd=source,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeUnavailable(f"could not start a worker for {spec.version}: {exc}") from exc
        finally:
            stderr.close()
        try:
            ready = self._read_ready(proc, log_path)
        except BaseException:
            kill_session(proc.pid)
            proc.wait()
            raise
        worker = _Worker(
            version_id=spec.version_id, pid=proc.pid, port=int(ready["port"]), proc=proc
        )
        threading.Thread(target=self._drain_stdout, args=(proc, log_path), daemon=True).start()
        if not self._healthy(worker, spec.version_id):
            self._terminate(worker, wait=5)
            raise RuntimeUnavailable(
                f"the worker of version {spec.version} failed its health check"
            )
        write_private(
            self.registry / f"{spec.version_id}.json",
            json.dumps({"pid": proc.pid, "port": worker.port, "version": spec.version}),
        )
        log.info(
            "started worker for version %s (pid %s, port %s)", spec.version, proc.pid, worker.port
        )
        return worker

    def _read_ready(self, proc: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any]:
        assert proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeUnavailable(
                        f"the worker did not start within {self.start_timeout:.0f}s"
                    )
                if selector.select(timeout=min(remaining, 0.5)):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    buffer += chunk
                elif proc.poll() is not None:
                    break
        line = buffer.split(b"\n", 1)[0]
        try:
            message = json.loads(line) if line else {}
        except ValueError:
            message = {}
        if message.get("event") == "ready":
            return message
        proc.wait(timeout=10)
        tail = log_path.read_bytes()[-2000:].decode("utf-8", "replace") if log_path.exists() else ""
        errors = message.get("errors") or []
        if errors:
            detail = "; ".join(
                f"{e.get('file')}: {e.get('type')}: {e.get('message')}" for e in errors[:5]
            )
            raise PermanentError(f"the worker could not load the tasks: {detail}")
        raise RuntimeUnavailable(
            f"the worker exited with code {proc.returncode}: {tail.strip()[-500:]}"
        )

    @staticmethod
    def _drain_stdout(proc: subprocess.Popen[bytes], log_path: Path) -> None:
        assert proc.stdout is not None
        with proc.stdout, open_private(log_path, "ab") as out:
            stream = proc.stdout
            for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
                out.write(chunk)

    def _forget(self, version_id: int) -> _Worker | None:
        (self.registry / f"{version_id}.json").unlink(missing_ok=True)
        return self._workers.pop(version_id, None)

    def activate(self, spec: VersionSpec) -> None:
        """Nothing to switch: every run names its version's worker."""

    def retire(self, version_id: int) -> None:
        with self._version_lock(version_id):
            worker = self._forget(version_id)
            if worker is None:
                worker = self._adopt(version_id)
                (self.registry / f"{version_id}.json").unlink(missing_ok=True)
            if worker is None:
                return
        log.info("retiring the worker of version id %s (pid %s)", version_id, worker.pid)
        self._retire_in_background(worker)

    def _retire_in_background(self, worker: _Worker) -> None:
        def reap() -> None:
            try:
                self._terminate(worker, wait=self.drain_timeout)
            finally:
                with self._lock:
                    self._retiring.pop(worker.pid, None)

        with self._lock:
            self._retiring[worker.pid] = worker
        reaper = threading.Thread(target=reap, name=f"retire-{worker.pid}", daemon=True)
        reaper.start()
        self._reapers = [t for t in self._reapers if t.is_alive()] + [reaper]

    def _terminate(self, worker: _Worker, *, wait: float) -> None:
        """SIGTERM (drain), then SIGKILL to the worker's session at the deadline (or at
        the close deadline, whichever comes first)."""
        deadline = time.monotonic() + wait
        # Runs this controller already handed to the worker finish before it drains.
        while worker.in_flight and time.monotonic() < min(deadline, self._close_by):
            time.sleep(0.02)
        try:
            os.kill(worker.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        while time.monotonic() < min(deadline, self._close_by):
            if worker.gone():
                break
            time.sleep(0.05)
        else:
            log.warning(
                "the worker of version id %s (pid %s) did not drain in time; killing it and "
                "its runs",
                worker.version_id,
                worker.pid,
            )
        kill_session(worker.pid)
        if worker.proc is not None:
            worker.proc.wait()

    def owned_sessions(self) -> set[int]:
        """Pids of live workers (session leaders) carrying this registry's mark."""
        return workers_marked(WORKER_MAIN, owner=self.registry)

    def stop_strays(self) -> int:
        """Stop marked workers that no record names (nobody can adopt them)."""
        recorded = set()
        for path in self.registry.glob("*.json"):
            with contextlib.suppress(ValueError):
                record = self._record(int(path.stem))
                if record is not None:
                    recorded.add(record["pid"])
        strays = self.owned_sessions() - recorded - {w.pid for w in self._workers.values()}
        for pid in strays:
            log.warning("stopping a worker (pid %s) that no record names", pid)
            self._terminate(_Worker(version_id=0, pid=pid, port=0), wait=5.0)
        return len(strays)

    def stop_unlisted(self, keep: set[int]) -> None:
        """Retire recorded workers (e.g. adopted after a crash) of versions not in ``keep``."""
        for path in self.registry.glob("*.json"):
            try:
                version_id = int(path.stem)
            except ValueError:
                continue
            if version_id not in keep and version_id not in self._workers:
                self.retire(version_id)

    def recorded(self) -> set[int]:
        """Versions with a worker record (maybe one a previous controller started)."""
        return {int(p.stem) for p in self.registry.glob("*.json") if p.stem.isdigit()}

    def serving(self) -> set[int]:
        return set(self._workers)

    def idle_for(self, version_id: int) -> float:
        worker = self._workers.get(version_id)
        if worker is None or worker.in_flight:
            return 0.0
        return time.monotonic() - worker.last_used

    def live_previews(self) -> list[_Worker]:
        """Preview workers, least recently used first."""
        with self._lock:
            workers = [w for w in self._workers.values() if w.preview]
        return sorted(workers, key=lambda w: w.last_used)

    def stop_idle_previews(self) -> int:
        """Scale to zero: retire preview workers without a run for the idle timeout
        (0: never). The next run starts the worker again."""
        if self.preview_idle_timeout <= 0:
            return 0
        idle = [
            w
            for w in self.live_previews()
            if self.idle_for(w.version_id) > self.preview_idle_timeout
        ]
        for worker in idle:
            log.info("the preview worker of version id %s is idle: stopping it", worker.version_id)
            self._retire_if_idle(worker)
        return len(idle)

    def stop_previews_over_cap(self, *, keep: int) -> None:
        """At most ``max_live_previews`` preview workers: the least recently used idle
        ones stop first. A worker with a run in flight is not picked, and its retire
        waits for runs leased meanwhile, so no run in flight is cut off."""
        previews = self.live_previews()
        excess = len(previews) - self.max_live_previews
        for worker in (w for w in previews if w.version_id != keep):
            if excess <= 0:
                break
            if worker.in_flight == 0 and self._retire_if_idle(worker):
                excess -= 1

    def _retire_if_idle(self, worker: _Worker) -> bool:
        with self._version_lock(worker.version_id):
            if self._workers.get(worker.version_id) is not worker or worker.in_flight:
                return False
            self._forget(worker.version_id)
        self._retire_in_background(worker)
        return True

    def close(self, *, timeout: float = 15.0) -> None:
        """Stop every worker of this data dir: ours, recorded ones, retiring ones and
        unrecorded marked ones; nothing of the data dir's workers outlives this call."""
        self._close_by = time.monotonic() + timeout
        self._closing.set()
        with self._lock:
            locks = list(self._locks.values())
        for lock in locks:  # a start in progress finishes (and is stopped below)
            with lock:
                pass
        workers = {w.pid: w for w in self._workers.values()}
        self._workers.clear()
        owned = self.owned_sessions()
        for path in self.registry.glob("*.json"):
            record = None
            with contextlib.suppress(ValueError):
                record = self._record(int(path.stem))
            if record is not None and record["pid"] in owned:
                workers.setdefault(
                    record["pid"],
                    _Worker(version_id=int(path.stem), pid=record["pid"], port=record["port"]),
                )
            path.unlink(missing_ok=True)
        for pid in owned - set(workers):
            workers[pid] = _Worker(version_id=0, pid=pid, port=0)
        threads = []
        for worker in workers.values():
            if worker.pid in self._retiring:
                continue  # its reaper stops it by the close deadline
            thread = threading.Thread(
                target=self._terminate, args=(worker,), kwargs={"wait": timeout}
            )
            thread.start()
            threads.append(thread)
        for thread in threads + self._reapers:
            thread.join(timeout + 10)
        for pid in self.owned_sessions():
            kill_session(pid)
        self._client.close()

    # -- runs -----------------------------------------------------------------------------

    def acquire(self, spec: VersionSpec) -> dict[str, Any]:
        """A lease for one run: the worker is started if needed and counts the run in
        flight until :meth:`release`, so a concurrent retire waits for it."""
        with self._version_lock(spec.version_id):
            serving = spec.version_id in self._workers
            worker = self._ensure_locked(spec, check=False)
            worker.in_flight += 1
        if not serving:
            self.stop_previews_over_cap(keep=spec.version_id)
        return {"url": worker.url, "port": worker.port}

    def release(self, version_id: int, port: int) -> None:
        with self._version_lock(version_id), self._lock:
            candidates = [self._workers.get(version_id), *self._retiring.values()]
            for worker in candidates:
                if worker is not None and worker.port == port and worker.in_flight > 0:
                    worker.in_flight -= 1
                    worker.last_used = time.monotonic()
                    return

    def refused(self, version_id: int, port: int) -> None:
        """The worker on ``port`` refused a run (it is draining): start the version anew."""
        with self._version_lock(version_id):
            worker = self._workers.get(version_id)
            if worker is not None and worker.port == port:
                self._forget(version_id)

    def run(
        self,
        spec: VersionSpec,
        *,
        run_id: str,
        task_id: str,
        payload: Any,
        timeout: float | None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        for attempt in (1, 2):
            lease = self.acquire(spec)
            try:
                response = post_run(
                    self._client,
                    lease["url"],
                    run_id=run_id,
                    task_id=task_id,
                    payload=payload,
                    timeout=timeout,
                    env=env,
                )
            except httpx.ConnectError as exc:
                # Nothing reached the worker, so the run has not started: replace the
                # worker and try once more.
                self.release(spec.version_id, lease["port"])
                self.refused(spec.version_id, lease["port"])
                if attempt == 1:
                    continue
                raise RuntimeUnavailable(
                    f"the worker of version {spec.version} is unreachable: {exc}"
                ) from exc
            except httpx.HTTPError as exc:
                self.release(spec.version_id, lease["port"])
                raise RuntimeUnavailable(
                    f"the worker of version {spec.version} is unreachable: {exc}"
                ) from exc
            self.release(spec.version_id, lease["port"])
            if response.status_code == 503 and attempt == 1:
                # Retired after we picked it: the worker refused the run before starting
                # it, so start the version again.
                self.refused(spec.version_id, lease["port"])
                continue
            break
        return answer_of(response, spec=spec, task_id=task_id)
