"""The local runtime: one worker process per live version, on this machine.

A worker (``worker_main.py``, run by the version's own virtualenv Python) imports the
version's tasks once, then serves runs over HTTP on 127.0.0.1, each run in a child
process of its own. Workers start in their own session, so a controller killed with
SIGKILL leaves them running; each worker is recorded in ``<data>/workers/<id>.json`` and
a restarted controller adopts it after checking its pid and ``/health`` (its version id).

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

Retiring stops a worker (drain, then SIGKILL to its session) in a reaper thread with a long
deadline; :meth:`close` with a short one (the web process gave runs their grace period).
With ``keep_warm`` (the controller), a worker starts from a standby interpreter of its
environment when one is ready (:class:`.workers.WorkerStandby`). Elsewhere: starting and
stopping a worker process (:mod:`.workers`), the cap on live
previews (:mod:`.slots`), a run's request and its one retry (:mod:`.runcall`), runs sent
without a lease (:mod:`.ledger`). Over 400 lines: the lifecycle, the cap's eviction and the
run leases share the version locks and worker records, and splitting them would spread
one lock discipline over several files.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.datadir import private_dir
from controller.errors import PermanentError, RuntimeUnavailable
from controller.runtimes.base import VersionSpec
from controller.runtimes.ledger import RunLedger
from controller.runtimes.procs import kill_session, workers_marked
from controller.runtimes.runcall import WorkerConnections, WorkerUnreachable, run_leased
from controller.runtimes.slots import PreviewSlots
from controller.runtimes.workers import (
    WORKER_MAIN,
    Registry,
    Worker,
    WorkerStandby,
    compile_worker,
    pid_alive,
    spawn_worker,
    stop_worker,
)

log = logging.getLogger(__name__)

EVICT_WAIT = 10.0  # an idle worker exits at once on SIGTERM; its session is killed after this


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
        keep_warm: bool = False,
    ) -> None:
        self.registry = data_dir / "workers"
        self.records = Registry(self.registry)
        self.logs = data_dir / "logs" / "workers"
        self.home = data_dir / "home"
        for path in (self.registry, self.logs, self.home):
            private_dir(path)
        self.bytecode = compile_worker(data_dir / "cache" / "worker-bytecode")
        self.standby = (
            WorkerStandby(registry=self.registry, logs=self.logs, home=self.home)
            if keep_warm
            else None
        )
        self.start_timeout = start_timeout
        self.drain_timeout = drain_timeout
        self.may_start = may_start
        self.preview_idle_timeout = preview_idle_timeout
        self.max_live_previews = max_live_previews
        self._closing = threading.Event()
        self.slots = PreviewSlots(max_live_previews, stopping=self._closing)
        self._workers: dict[int, Worker] = {}
        self._retiring: dict[int, Worker] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()
        # Health checks: kept alive too, apart from runs' (http.client: the controller
        # process does not import httpx: ~5 MB with what it pulls in).
        self._client = WorkerConnections()
        self._runs = WorkerConnections()
        self._reapers: list[threading.Thread] = []
        self.ledger = RunLedger()
        self._close_by = float("inf")

    # -- lifecycle ------------------------------------------------------------------------

    def _version_lock(self, version_id: int) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(version_id, threading.Lock())

    def ensure(self, spec: VersionSpec) -> None:
        with self._version_lock(spec.version_id):
            self._ensure_locked(spec, check=True)

    def _ensure_locked(self, spec: VersionSpec, *, check: bool) -> Worker:
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
            self._discard(worker)
        refusal = self.may_start(spec.version_id) if self.may_start is not None else None
        if refusal:
            raise PermanentError(f"version {spec.version} is not started: {refusal}")
        preview = spec.context.get("environment") == "preview"
        if preview:
            self.slots.reserve(evict=self._evict_idle_preview, timeout=self.start_timeout)
        try:
            adopted = self._adopt(spec.version_id)
            worker = adopted if adopted is not None else self._start(spec)
        except BaseException:
            if preview:
                self.slots.give_back()
            raise
        worker.preview = worker.slot = preview
        self._workers[spec.version_id] = worker
        return worker

    def _discard(self, worker: Worker) -> None:
        """A worker we no longer use (dead, unhealthy, refusing): stopped if it is not
        gone yet, its preview slot given back once its process is."""
        if worker.gone():
            self._give_back(worker)
        else:
            self._retire_in_background(worker)

    def _give_back(self, worker: Worker) -> None:
        with self._lock:
            held, worker.slot = worker.slot, False
        if held:
            self.slots.give_back()

    def _healthy(self, worker: Worker, version_id: int) -> bool:
        if worker.proc is not None and worker.proc.poll() is not None:
            return False
        try:
            response = self._client.get(worker.url, "/health", read_timeout=3.0)
            body = response.json()
        except (WorkerUnreachable, ValueError):
            return False
        return (
            response.status_code == 200
            and isinstance(body, dict)
            and body.get("version_id") == version_id
        )

    def _adopt(self, version_id: int) -> Worker | None:
        worker = self.records.read(version_id)
        if worker is None:
            return None
        if pid_alive(worker.pid) and self._healthy(worker, version_id):
            log.info("adopted the running worker of version id %s (pid %s)", version_id, worker.pid)
            return worker
        self.records.remove(version_id)
        if worker.pid in self.owned_sessions():
            self._terminate(worker, wait=5.0)  # recorded but unhealthy: it is replaced
        return None

    def _start(self, spec: VersionSpec) -> Worker:
        proc, port = spawn_worker(
            spec,
            registry=self.registry,
            logs=self.logs,
            home=self.home,
            start_timeout=self.start_timeout,
            bytecode=self.bytecode,
            standby=self.standby,
        )
        worker = Worker(version_id=spec.version_id, pid=proc.pid, port=port, proc=proc)
        if not self._healthy(worker, spec.version_id):
            self._terminate(worker, wait=5)
            raise RuntimeUnavailable(
                f"the worker of version {spec.version} failed its health check"
            )
        self.records.write(worker, version=spec.version)
        log.info(
            "started worker for version %s (pid %s, port %s)", spec.version, proc.pid, worker.port
        )
        return worker

    def _forget(self, version_id: int) -> Worker | None:
        self.records.remove(version_id)
        return self._workers.pop(version_id, None)

    def activate(self, spec: VersionSpec) -> None:
        """Nothing to switch: every run names its version's worker."""

    def retire(self, version_id: int) -> None:
        with self._version_lock(version_id):
            worker = self._forget(version_id)
            if worker is None:
                worker = self._adopt(version_id)
                self.records.remove(version_id)
            if worker is None:
                return
        log.info("retiring the worker of version id %s (pid %s)", version_id, worker.pid)
        self._retire_in_background(worker)

    def _retire_in_background(self, worker: Worker) -> None:
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

    def _terminate(self, worker: Worker, *, wait: float) -> None:
        """SIGTERM (drain), then SIGKILL to the worker's session at the deadline (or at
        the close deadline, whichever comes first). Its preview slot is given back only
        here, once the process is gone, or by :meth:`_discard` for one already gone."""
        try:
            deadline = time.monotonic() + wait
            stop_worker(worker, until=lambda: min(deadline, self._close_by))
        finally:
            self._give_back(worker)

    def owned_sessions(self) -> set[int]:
        """Pids of live workers (session leaders) carrying this registry's mark."""
        return workers_marked(WORKER_MAIN, owner=self.registry)

    def stop_strays(self) -> int:
        """Stop marked workers that no record names (nobody can adopt them)."""
        recorded = {worker.pid for worker in self.records.workers()}
        strays = self.owned_sessions() - recorded - {w.pid for w in self._workers.values()}
        for pid in strays:
            log.warning("stopping a worker (pid %s) that no record names", pid)
            self._terminate(Worker(version_id=0, pid=pid, port=0), wait=5.0)
        return len(strays)

    def stop_unlisted(self, keep: set[int]) -> None:
        """Retire recorded workers (e.g. adopted after a crash) of versions not in ``keep``."""
        for version_id in self.records.versions():
            if version_id not in keep and version_id not in self._workers:
                self.retire(version_id)

    def recorded(self) -> set[int]:
        """Versions with a worker record (maybe one a previous controller started)."""
        return self.records.versions()

    def serving(self) -> set[int]:
        return set(self._workers)

    def idle_for(self, version_id: int) -> float:
        worker = self._workers.get(version_id)
        if worker is None or worker.in_flight:
            return 0.0
        return time.monotonic() - worker.last_used

    def live_previews(self) -> list[Worker]:
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

    def _evict_idle_preview(self) -> bool:
        """Stop the least recently used idle preview worker and wait for its exit (called
        by :meth:`PreviewSlots.reserve` under its lock). A worker with a run in flight, or
        whose version lock is taken (a run is leasing it), is passed over."""
        for worker in self.live_previews():
            lock = self._version_lock(worker.version_id)
            if worker.in_flight or not lock.acquire(blocking=False):
                continue
            try:
                if self._workers.get(worker.version_id) is not worker or worker.in_flight:
                    continue
                self._forget(worker.version_id)
            finally:
                lock.release()
            log.info(
                "%d preview workers live (SLIPWAY_MAX_LIVE_PREVIEW_WORKERS): stopping the "
                "least recently used, version id %s",
                self.max_live_previews,
                worker.version_id,
            )
            self._terminate(worker, wait=EVICT_WAIT)
            return True
        return False

    def _retire_if_idle(self, worker: Worker) -> bool:
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
        self.slots.notify()
        if self.standby is not None:
            self.standby.close()  # refills after this are refused
        with self._lock:
            locks = list(self._locks.values())
        for lock in locks:  # a start in progress finishes (and is stopped below)
            with lock:
                pass
        workers = {w.pid: w for w in self._workers.values()}
        self._workers.clear()
        owned = self.owned_sessions()
        for recorded in self.records.workers():
            if recorded.pid in owned:
                workers.setdefault(recorded.pid, recorded)
        self.records.clear()
        for pid in owned - set(workers):
            workers[pid] = Worker(version_id=0, pid=pid, port=0)
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
        self._runs.close()

    # -- runs -----------------------------------------------------------------------------

    def acquire(self, spec: VersionSpec) -> dict[str, Any]:
        """A lease for one run: the worker is started if needed and counts the run in
        flight until :meth:`release`, so a concurrent retire waits for it."""
        with self._version_lock(spec.version_id):
            worker = self._ensure_locked(spec, check=False)
            worker.in_flight += 1
        return {"url": worker.url, "port": worker.port}

    def begin(self, version_id: int, port: int, run_id: str) -> None:
        """A run the web process sends to the worker on ``port`` without a lease (it
        found the worker in the registry): counted until its :meth:`release`."""

        def count() -> None:
            with self._lock:
                candidates = [self._workers.get(version_id), *self._retiring.values()]
                match = next((w for w in candidates if w is not None and w.port == port), None)
                self.ledger.begin(run_id, match)

        self._soon_under_version_lock(version_id, count)

    def release(self, version_id: int, port: int, run_id: str | None = None) -> None:
        """The end of a leased run, or (``run_id``) of one counted by :meth:`begin`."""

        def uncount() -> None:
            with self._lock:
                candidates = [self._workers.get(version_id), *self._retiring.values()]
                if run_id is not None:
                    self.ledger.release(run_id)
                    candidates = []
                for worker in candidates:
                    if worker is not None and worker.port == port and worker.in_flight > 0:
                        worker.in_flight -= 1
                        worker.last_used = time.monotonic()
                        break

        self._soon_under_version_lock(version_id, uncount)
        self.slots.notify()  # after both locks: a start waiting for a slot may evict it

    def _soon_under_version_lock(self, version_id: int, change: Callable[[], None]) -> None:
        """``change`` under the version's lock: now if it is free, else in a thread of
        its own once it is. Begins and releases come from one thread reading them all
        (see :mod:`.control`); one waiting behind a worker start would hold up every
        other run's release, and a start waiting for a preview slot waits for those.
        Deferred, a release may be applied before its begin: the ledger pairs them."""
        lock = self._version_lock(version_id)
        if lock.acquire(blocking=False):
            try:
                change()
            finally:
                lock.release()
            return

        def later() -> None:
            with lock:
                change()
            self.slots.notify()

        threading.Thread(target=later, name=f"ledger-{version_id}", daemon=True).start()

    def refused(self, version_id: int, port: int) -> None:
        """The worker on ``port`` refused a run (it is draining): start the version anew."""
        with self._version_lock(version_id):
            worker = self._workers.get(version_id)
            if worker is not None and worker.port == port:
                self._forget(version_id)
                self._discard(worker)

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
        return run_leased(
            self,
            self._runs,
            spec,
            run_id=run_id,
            task_id=task_id,
            payload=payload,
            timeout=timeout,
            env=env,
        )
