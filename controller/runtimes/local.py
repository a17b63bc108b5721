"""The local runtime: one worker process per live version, on this machine.

A worker (``worker_main.py``, run by the version's own virtualenv Python) imports the
version's tasks once, then serves runs over HTTP on 127.0.0.1, each run in a child
process of its own. Workers start in their own session, so a controller killed with
SIGKILL leaves them running; each worker is recorded in ``<data>/workers/<id>.json`` and
a restarted controller adopts it after checking its pid and ``/health`` (which reports
the version id, guarding against pid reuse). A graceful controller stop stops them all.

Retiring a version sends SIGTERM: the worker refuses new runs, finishes in-flight ones,
then exits; a reaper thread waits for it. The same version can be started again later
(rollback, pinned runs).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.datadir import open_private, private_dir, write_private
from controller.errors import PermanentError, RuntimeUnavailable
from controller.runtimes.base import VersionSpec

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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalRuntime:
    name = "local"

    def __init__(
        self, *, data_dir: Path, start_timeout: float = 60.0, drain_timeout: float = 3600.0
    ) -> None:
        self.registry = data_dir / "workers"
        self.logs = data_dir / "logs" / "workers"
        self.home = data_dir / "home"
        for path in (self.registry, self.logs, self.home):
            private_dir(path)
        self.start_timeout = start_timeout
        self.drain_timeout = drain_timeout
        self._workers: dict[int, _Worker] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=httpx.Timeout(5.0), trust_env=False)
        self._reapers: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------

    def _version_lock(self, version_id: int) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(version_id, threading.Lock())

    def ensure(self, spec: VersionSpec) -> None:
        with self._version_lock(spec.version_id):
            self._ensure_locked(spec)

    def _ensure_locked(self, spec: VersionSpec) -> _Worker:
        worker = self._workers.get(spec.version_id)
        if worker is not None and self._healthy(worker, spec.version_id):
            return worker
        if worker is not None:
            self._forget(spec.version_id)
        adopted = self._adopt(spec.version_id)
        worker = adopted if adopted is not None else self._start(spec)
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

    def _adopt(self, version_id: int) -> _Worker | None:
        path = self.registry / f"{version_id}.json"
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        worker = _Worker(version_id=version_id, pid=int(record["pid"]), port=int(record["port"]))
        if _pid_alive(worker.pid) and self._healthy(worker, version_id):
            log.info("adopted the running worker of version id %s (pid %s)", version_id, worker.pid)
            return worker
        path.unlink(missing_ok=True)
        return None

    def _start(self, spec: VersionSpec) -> _Worker:
        if not (spec.venv / "bin" / "python").exists():
            raise PermanentError(
                f"the environment of version {spec.version} is missing: {spec.venv}"
            )
        env = {
            "PATH": f"{spec.venv / 'bin'}:{SYSTEM_PATH}",
            "HOME": str(self.home),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "VIRTUAL_ENV": str(spec.venv),
            "PYTHONUNBUFFERED": "1",
            **spec.env,
        }
        context = {**spec.context, "version": spec.version, "version_id": spec.version_id}
        log_path = self.logs / f"{spec.version_id}.log"
        stderr = open_private(log_path, "ab")  # handed to the child
        try:
            proc = subprocess.Popen(
                [
                    str(spec.venv / "bin" / "python"),
                    "-I",
                    "-B",
                    str(WORKER_MAIN),
                    "--source",
                    str(spec.source),
                    "--tasks-dir",
                    spec.tasks_dir,
                    "--context-json",
                    json.dumps(context),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                ],
                cwd=spec.source,
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
        ready = self._read_ready(proc, log_path)
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
                    proc.kill()
                    proc.wait()
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

    def retire(self, version_id: int) -> None:
        with self._version_lock(version_id):
            worker = self._forget(version_id)
            if worker is None:
                worker = self._adopt(version_id)
                (self.registry / f"{version_id}.json").unlink(missing_ok=True)
            if worker is None:
                return
        log.info("retiring the worker of version id %s (pid %s)", version_id, worker.pid)
        reaper = threading.Thread(
            target=self._terminate, args=(worker,), kwargs={"wait": self.drain_timeout}, daemon=True
        )
        reaper.start()
        self._reapers = [t for t in self._reapers if t.is_alive()] + [reaper]

    def _terminate(self, worker: _Worker, *, wait: float) -> None:
        # Runs this controller already handed to the worker finish before it drains.
        deadline = time.monotonic() + wait
        while worker.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            os.kill(worker.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if worker.proc is not None:
                if worker.proc.poll() is not None:
                    return
            elif not _pid_alive(worker.pid):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, signal.SIGKILL)
        if worker.proc is not None:
            worker.proc.wait()

    def stop_unlisted(self, keep: set[int]) -> None:
        """Retire recorded workers (e.g. adopted after a crash) of versions not in ``keep``."""
        for path in self.registry.glob("*.json"):
            try:
                version_id = int(path.stem)
            except ValueError:
                continue
            if version_id not in keep and version_id not in self._workers:
                self.retire(version_id)

    def serving(self) -> set[int]:
        return set(self._workers)

    def idle_for(self, version_id: int) -> float:
        worker = self._workers.get(version_id)
        if worker is None or worker.in_flight:
            return 0.0
        return time.monotonic() - worker.last_used

    def close(self, *, timeout: float = 15.0) -> None:
        workers = list(self._workers.values())
        self._workers.clear()
        threads = []
        for worker in workers:
            (self.registry / f"{worker.version_id}.json").unlink(missing_ok=True)
            thread = threading.Thread(
                target=self._terminate, args=(worker,), kwargs={"wait": timeout}
            )
            thread.start()
            threads.append(thread)
        for thread in threads + self._reapers:
            thread.join(timeout + 5)
        self._client.close()

    # -- runs -----------------------------------------------------------------------------

    def run(
        self, spec: VersionSpec, *, run_id: str, task_id: str, payload: Any, timeout: float | None
    ) -> dict[str, Any]:
        for attempt in (1, 2):
            response = self._post_run(
                spec, run_id=run_id, task_id=task_id, payload=payload, timeout=timeout
            )
            if response.status_code == 503 and attempt == 1:
                # Retired (by this or another controller process) after we picked it: the
                # worker refused the run before starting it, so start the version again.
                with self._version_lock(spec.version_id):
                    self._forget(spec.version_id)
                continue
            break
        if response.status_code == 404:
            raise PermanentError(f"task {task_id!r} does not exist in version {spec.version}")
        if response.status_code != 200:
            raise RuntimeUnavailable(
                f"the worker answered {response.status_code}: {response.text[:300]}"
            )
        return dict(response.json())

    def _post_run(
        self, spec: VersionSpec, *, run_id: str, task_id: str, payload: Any, timeout: float | None
    ) -> httpx.Response:
        with self._version_lock(spec.version_id):
            # Registered under the lock: a concurrent retire() waits for this run.
            worker = self._ensure_locked(spec)
            worker.in_flight += 1
        try:
            return self._client.post(
                worker.url + "/runs",
                json={"run_id": run_id, "task_id": task_id, "payload": payload, "timeout": timeout},
                timeout=httpx.Timeout(5.0, read=(timeout or 24 * 3600) + 60),
            )
        except httpx.HTTPError as exc:
            raise RuntimeUnavailable(
                f"the worker of version {spec.version} is unreachable: {exc}"
            ) from exc
        finally:
            with self._version_lock(spec.version_id):
                worker.in_flight -= 1
                worker.last_used = time.monotonic()
