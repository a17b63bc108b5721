"""A worker process as the local runtime sees it: start one, read its ready line, stop it.

The worker (``worker_main.py``) runs under the version's own virtualenv Python with
``-I -B``, in a session of its own (so it survives a SIGKILLed controller and is adopted by
the next one), with an environment built from scratch: ``PATH`` (the venv first), ``HOME``
(the data dir's), ``LANG``, ``VIRTUAL_ENV`` and the version's variables, nothing of the
controller's own. ``--owner <data>/workers`` marks it (see :mod:`controller.runtimes.procs`).
Its first stdout line says ready (with its port) or lists the tasks' import errors
(a :class:`PermanentError`: retrying cannot help). A :class:`WorkerStandby` keeps an
interpreter per environment that has already loaded the worker's files, so a deploy's
worker start pays for importing the version's tasks only.

Stopping: SIGTERM makes a worker refuse new runs and finish in-flight ones, then exit;
after the deadline its whole session gets SIGKILL (worker, spawner and every run: runs sit
in process groups of their own but stay in the worker's session), so no run is orphaned.
"""

from __future__ import annotations

import json
import logging
import os
import py_compile
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import cpus
from controller.datadir import open_private, private_dir, write_private
from controller.errors import PermanentError, RuntimeUnavailable
from controller.runtimes import worker_main
from controller.runtimes.base import VersionSpec, host_paths
from controller.runtimes.procs import kill_session, session_of
from controller.standby import StandbyPool

log = logging.getLogger(__name__)

WORKER_MAIN = Path(worker_main.__file__)
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class Worker:
    """A worker as the runtime tracks it: ``proc`` is None for one adopted after a restart."""

    version_id: int
    pid: int
    port: int
    proc: subprocess.Popen[bytes] | None = None
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    preview: bool = False
    slot: bool = False  # holds one of the preview slots until its process is gone

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gone(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        return session_of(self.pid) is None  # gone, or a zombie its parent has to reap


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    """``<data>/workers/<version id>.json``: each version's worker (pid, port), so that a
    restarted controller adopts it. Unreadable records read as none."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, version_id: int) -> Worker | None:
        try:
            record = json.loads((self.path / f"{version_id}.json").read_text())
            return Worker(version_id=version_id, pid=int(record["pid"]), port=int(record["port"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def write(self, worker: Worker, *, version: str) -> None:
        record = {"pid": worker.pid, "port": worker.port, "version": version}
        write_private(self.path / f"{worker.version_id}.json", json.dumps(record))

    def remove(self, version_id: int) -> None:
        (self.path / f"{version_id}.json").unlink(missing_ok=True)

    def versions(self) -> set[int]:
        return {int(p.stem) for p in self.path.glob("*.json") if p.stem.isdigit()}

    def workers(self) -> list[Worker]:
        return [w for w in map(self.read, self.versions()) if w is not None]

    def clear(self) -> None:
        for path in self.path.glob("*.json"):
            path.unlink(missing_ok=True)


def compile_worker(cache: Path) -> Path | None:
    """Compile the worker's files into ``cache`` (see ``worker_main.py``: it runs them
    from there when they match its sources); None when that cannot be done."""
    try:
        private_dir(cache)
        for _name, source in worker_main.FILES:
            py_compile.compile(
                str(source), cfile=str(cache / worker_main.cached_name(source)), doraise=True
            )
    except (OSError, py_compile.PyCompileError) as exc:
        log.warning("worker bytecode not cached (%s): workers compile their files", exc)
        return None
    return cache


class WorkerStandby(StandbyPool):
    """Workers started ahead of need (:mod:`controller.standby`): an interpreter of the
    version's environment that has loaded the worker's own files (``http.server`` and
    the rest: most of a worker's start) and waits for a version to serve. It runs in a
    session of its own with the registry's mark, as a worker does; its stderr goes to
    ``standby.log`` until it is given a version's log. ~20 MB each, at most ``limit``."""

    def __init__(self, *, registry: Path, logs: Path, home: Path, limit: int = 2) -> None:
        def start(python: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
            stderr = open_private(logs / "standby.log", "ab")  # handed to the child
            try:
                return subprocess.Popen(
                    [str(python), "-I", "-B", str(WORKER_MAIN), *mark(registry), "--standby"],
                    cwd=home,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    start_new_session=True,
                )
            finally:
                stderr.close()

        super().__init__(start, limit=limit)

    def start_worker(
        self, python: Path, env: dict[str, str], argv: list[str], *, log: Path
    ) -> subprocess.Popen[bytes] | None:
        """A ready standby told to serve ``argv`` (a worker's arguments); None if there
        is none for this interpreter and environment, or it died meanwhile."""
        proc = self.take(python, env)
        if proc is None:
            return None
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}).encode() + b"\n")
            proc.stdin.close()
        except OSError:  # it died after take() saw it alive
            _kill(proc)
            return None
        return proc


def mark(registry: Path) -> list[str]:
    """What ties a worker to the runtime that owns it (see :mod:`controller.runtimes.procs`)."""
    return ["--owner", str(registry)]


def worker_env(
    venv: Path, *, home: Path, env: dict[str, str], bytecode: Path | None
) -> dict[str, str]:
    """A worker's whole environment, built from scratch (nothing of the controller's)."""
    full = {
        "PATH": f"{venv / 'bin'}:{SYSTEM_PATH}",
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "VIRTUAL_ENV": str(venv),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    if bytecode is not None:
        full["SLIPWAY_WORKER_PYCACHE"] = str(bytecode)
    return full


def spawn_worker(
    spec: VersionSpec,
    *,
    registry: Path,
    logs: Path,
    home: Path,
    start_timeout: float,
    bytecode: Path | None = None,
    standby: WorkerStandby | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``spec``'s worker in a session of its own (from a standby when one is ready
    for its environment) and wait for its ready line; its process and port. Its stdout
    (after the ready line) and stderr go to its log."""
    source, venv = host_paths(spec.artifact)
    python = venv / "bin" / "python"
    if not python.exists():
        raise PermanentError(f"the environment of version {spec.version} is missing: {venv}")
    env = worker_env(venv, home=home, env=spec.env, bytecode=bytecode)
    context = {**spec.context, "version": spec.version, "version_id": spec.version_id}
    argv = [
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
        *mark(registry),
    ]
    log_path = logs / f"{spec.version_id}.log"
    stderr = open_private(log_path, "ab")  # handed to the child (or opened by a standby)
    try:
        proc = standby.start_worker(python, env, argv, log=log_path) if standby else None
        if proc is None:
            proc = subprocess.Popen(
                [str(python), "-I", "-B", str(WORKER_MAIN), *argv],
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
        ready = read_ready(proc, log_path, timeout=start_timeout)
    except BaseException:
        _kill(proc)
        raise
    finally:
        if standby is not None:
            standby.refill(python, env)  # for this environment's next version
    # Its start (importing the tasks) was deploy work, on the controller's CPUs; the runs
    # it serves from now on get every CPU the server has.
    cpus.widen_tree(proc.pid)
    threading.Thread(target=_drain_stdout, args=(proc, log_path), daemon=True).start()
    return proc, int(ready["port"])


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """A worker that did not become ready: its session killed, its pipes closed."""
    kill_session(proc.pid)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()
    proc.wait()


def read_ready(proc: subprocess.Popen[bytes], log_path: Path, *, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeUnavailable(f"the worker did not start within {timeout:.0f}s")
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


def _drain_stdout(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    assert proc.stdout is not None
    with proc.stdout, open_private(log_path, "ab") as out:
        stream = proc.stdout
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            out.write(chunk)


def stop_worker(worker: Worker, *, until: Callable[[], float]) -> None:
    """SIGTERM (drain), then SIGKILL to the worker's session when ``until()`` (a deadline
    that may move closer: a close) passes. Runs the runtime handed to the worker (its
    ``in_flight``) finish before it is told to drain."""
    while worker.in_flight and time.monotonic() < until():
        time.sleep(0.02)
    cpus.narrow_tree(worker.pid)  # its exit is the controller's work (controller.cpus)
    try:
        os.kill(worker.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(worker, until=until):
        log.warning(
            "the worker of version id %s (pid %s) did not drain in time; killing it and its runs",
            worker.version_id,
            worker.pid,
        )
    kill_session(worker.pid)
    if worker.proc is not None:
        worker.proc.wait()


def _wait_gone(worker: Worker, *, until: Callable[[], float]) -> bool:
    """A child of ours is waited on (woken by its exit), an adopted one is polled."""
    while (remaining := until() - time.monotonic()) > 0:
        if worker.proc is None:
            if worker.gone():
                return True
            time.sleep(min(remaining, 0.02))
            continue
        try:
            worker.proc.wait(timeout=min(remaining, 0.5))
            return True
        except subprocess.TimeoutExpired:
            continue
    return worker.gone()
