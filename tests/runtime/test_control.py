"""Issue 8 item 2: one owner of worker processes, reached over the control channel.

The controller's :class:`LocalRuntime` behind a :class:`ControlServer`; "web processes"
are :class:`RemoteRuntime` clients. Workers are real (``worker_main.py`` under this
interpreter's virtualenv) on a small task tree.

Over 400 lines: every case drives the same real controller, channel and workers, built
by the fixtures at the top.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from controller.errors import PermanentError, RuntimeUnavailable
from controller.runtimes.base import ArtifactRef, VersionSpec
from controller.runtimes.control import (
    ControlClient,
    ControlServer,
    RemoteRuntime,
    lease_handlers,
    spec_from_json,
)
from controller.runtimes.local import WORKER_MAIN, LocalRuntime
from controller.runtimes.procs import session_of, workers_marked
from controller.runtimes.workers import Worker

TASKS = {
    "tasks/hello.py": "def run(payload, ctx):\n    return {'pid': __import__('os').getpid()}\n",
    "tasks/nap.py": (
        "import time\n"
        "def run(payload, ctx):\n"
        "    open(payload['marker'], 'w').write(str(__import__('os').getpid()))\n"
        "    time.sleep(120)\n"
    ),
    "tasks/hold.py": (
        "import os, time\n"
        "def run(payload, ctx):\n"
        "    open(payload['marker'], 'w').write('started')\n"
        "    deadline = time.monotonic() + 60\n"
        "    while not os.path.exists(payload['go']) and time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        "    return {'pid': os.getpid()}\n"
    ),
}


def make_spec(root: Path, version_id: int = 1) -> VersionSpec:
    for rel, text in TASKS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return VersionSpec(
        version_id=version_id,
        version=f"20261201.{version_id}",
        artifact=ArtifactRef.on_host(digest=None, source=root, venv=Path(sys.prefix)),
        tasks_dir="tasks",
        context={"project": "demo", "environment": "production"},
    )


def handlers(runtime: LocalRuntime) -> dict[str, Any]:
    return {
        "ping": lambda r: True,
        "ensure": lambda r: runtime.ensure(spec_from_json(r["spec"])),
        "retire": lambda r: runtime.retire(int(r["version_id"])),
        **lease_handlers(runtime),
    }


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def owner(data_dir: Path) -> Iterator[tuple[LocalRuntime, ControlServer]]:
    runtime = LocalRuntime(data_dir=data_dir)
    server = ControlServer(data_dir, handlers(runtime))
    server.start()
    try:
        yield runtime, server
    finally:
        server.stop()
        runtime.close(timeout=2)
        assert not workers_marked(WORKER_MAIN, owner=runtime.registry)


def test_two_web_processes_racing_for_one_version_get_one_worker(
    owner: tuple[LocalRuntime, ControlServer], data_dir: Path, tmp_path: Path
) -> None:
    runtime, _server = owner
    spec = make_spec(tmp_path / "src")
    webs = [RemoteRuntime(ControlClient(data_dir), grace=1) for _ in range(2)]
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda i: webs[i % 2].run(
                        spec, run_id=f"run_{i}", task_id="hello", payload=None, timeout=30
                    ),
                    range(8),
                )
            )
    finally:
        for web in webs:
            web.close(timeout=1)
    assert {r["status"] for r in results} == {"completed"}
    assert len(workers_marked(WORKER_MAIN, owner=runtime.registry)) == 1
    assert runtime.serving() == {1}


def test_errors_keep_their_class_across_the_channel(
    owner: tuple[LocalRuntime, ControlServer], data_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path / "src")
    web = RemoteRuntime(ControlClient(data_dir), grace=1)
    try:
        with pytest.raises(PermanentError, match="does not exist"):
            web.run(spec, run_id="run_x", task_id="missing", payload=None, timeout=5)
    finally:
        web.close(timeout=1)


def test_an_archived_version_is_never_started_again(data_dir: Path, tmp_path: Path) -> None:
    archived: set[int] = set()
    runtime = LocalRuntime(
        data_dir=data_dir,
        may_start=lambda version_id: (
            "preview branch x is archived" if version_id in archived else None
        ),
    )
    spec = make_spec(tmp_path / "src")
    try:
        runtime.ensure(spec)
        archived.add(spec.version_id)
        runtime.retire(spec.version_id)
        with pytest.raises(PermanentError, match="archived"):
            runtime.ensure(spec)
        with pytest.raises(PermanentError, match="archived"):
            runtime.acquire(spec)
    finally:
        runtime.close(timeout=2)
    assert not workers_marked(WORKER_MAIN, owner=runtime.registry)


def test_close_stops_runs_in_flight_and_workers_no_record_names(
    data_dir: Path, tmp_path: Path
) -> None:
    first = LocalRuntime(data_dir=data_dir)
    spec = make_spec(tmp_path / "src")
    first.ensure(spec)
    (stray,) = workers_marked(WORKER_MAIN, owner=first.registry)
    for path in first.registry.glob("*.json"):
        path.unlink()  # as if the controller died before recording it
    proc = first._workers.pop(spec.version_id).proc
    assert proc is not None

    second = LocalRuntime(data_dir=data_dir)
    assert second.stop_strays() == 1
    proc.wait(30)
    assert session_of(stray) is None

    marker = tmp_path / "run.pid"
    outcome: dict[str, Any] = {}

    def nap() -> None:
        try:
            second.run(
                spec, run_id="run_n", task_id="nap", payload={"marker": str(marker)}, timeout=None
            )
        except RuntimeUnavailable as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=nap)
    thread.start()
    try:
        deadline_event = threading.Event()
        for _ in range(600):
            if marker.exists() and marker.read_text():
                break
            deadline_event.wait(0.1)
        run_pid = int(marker.read_text())
        second.close(timeout=1)
        thread.join(30)
        assert "error" in outcome
        assert session_of(run_pid) is None, "the run's process outlived close()"
        assert not workers_marked(WORKER_MAIN, owner=second.registry)
    finally:
        if marker.exists() and marker.read_text():
            with contextlib.suppress(OSError):
                os.kill(int(marker.read_text()), signal.SIGKILL)
        first.close(timeout=1)
        thread.join(30)


def test_the_socket_is_private_and_long_paths_work(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 30] * 4)
    deep.mkdir(parents=True)
    assert len(str(deep / "control.sock")) > 108
    server = ControlServer(deep, {"ping": lambda r: "pong"})
    server.start()
    try:
        assert ControlClient(deep).call("ping") == "pong"
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
    finally:
        server.stop()
    with pytest.raises(RuntimeUnavailable, match="cannot be reached"):
        ControlClient(deep).call("ping")
    assert not any(t.name == "control" for t in threading.enumerate())


def test_a_run_does_not_wait_for_the_controller_to_answer_its_release(
    data_dir: Path, tmp_path: Path
) -> None:
    """The release's handler is held: a warm run's answer must come back all the same,
    well before the channel's 5 s timeout that a waited-for release would end in (the
    niced controller is often the last process the scheduler gets to)."""
    runtime = LocalRuntime(data_dir=data_dir)
    hold = threading.Event()
    entered = threading.Event()
    go_on = threading.Event()
    released = threading.Event()
    ops = handlers(runtime)
    release = ops["release"]

    def slow_release(request: dict[str, Any]) -> Any:
        if hold.is_set():
            entered.set()
            go_on.wait(60)
        answer = release(request)
        released.set()
        return answer

    server = ControlServer(data_dir, {**ops, "release": slow_release})
    server.start()
    web = RemoteRuntime(ControlClient(data_dir), grace=1)
    spec = make_spec(tmp_path / "src")
    try:
        web.run(spec, run_id="r1", task_id="hello", payload=None, timeout=30)  # warm
        assert released.wait(30)
        released.clear()
        hold.set()
        started = time.monotonic()
        answer = web.run(spec, run_id="r2", task_id="hello", payload=None, timeout=30)
        elapsed = time.monotonic() - started
        assert answer["status"] == "completed"
        assert elapsed < 4.0, f"the run waited {elapsed:.1f} s for its release"
        assert not released.is_set()
        assert entered.wait(30)  # the release reached the controller
    finally:
        go_on.set()
        web.close(timeout=1)
        server.stop()
        runtime.close(timeout=2)
    assert released.is_set()  # the release did arrive (stop() joined its handler)
    assert not workers_marked(WORKER_MAIN, owner=runtime.registry)


def counting(ops: dict[str, Any], name: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    handler = ops[name]

    def counted(request: dict[str, Any]) -> Any:
        calls.append(request)
        return handler(request)

    return {**ops, name: counted}


def wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def hold_run(
    pool: ThreadPoolExecutor, web: RemoteRuntime, spec: VersionSpec, *, marker: Path, go: Path
) -> Future[dict[str, Any]]:
    """Run ``hold`` (run id ``r2``) in ``pool``: it writes ``marker``, then waits for ``go``."""
    return pool.submit(
        web.run,
        spec,
        run_id="r2",
        task_id="hold",
        payload={"marker": str(marker), "go": str(go)},
        timeout=60,
    )


def test_a_run_on_a_recorded_worker_skips_acquire_and_is_still_counted(
    data_dir: Path, tmp_path: Path
) -> None:
    """The second run goes straight to the recorded worker (no ``acquire``); the
    controller still counts it in flight (the idle timeout and the LRU see it) and
    uncounts it after."""
    runtime = LocalRuntime(data_dir=data_dir)
    acquires: list[dict[str, Any]] = []
    server = ControlServer(data_dir, counting(handlers(runtime), "acquire", acquires))
    server.start()
    web = RemoteRuntime(ControlClient(data_dir), grace=1)
    spec = make_spec(tmp_path / "src")
    marker, go = tmp_path / "marker", tmp_path / "go"
    try:
        first = web.run(spec, run_id="r1", task_id="hello", payload=None, timeout=30)
        assert first["status"] == "completed"
        assert len(acquires) == 1  # no record yet: the controller started the worker
        worker = runtime._workers[1]
        wait_until(lambda: worker.in_flight == 0, "the first release")
        with ThreadPoolExecutor(1) as pool:
            held = hold_run(pool, web, spec, marker=marker, go=go)
            wait_until(marker.exists, "the held run to start")
            wait_until(lambda: worker.in_flight == 1, "the begin to be counted")
            assert runtime.idle_for(1) == 0.0
            go.write_text("")
            assert held.result(60)["status"] == "completed"
        wait_until(lambda: worker.in_flight == 0, "the release to be counted")
        assert len(acquires) == 1
    finally:
        web.close(timeout=1)
        server.stop()
        runtime.close(timeout=2)
    assert not workers_marked(WORKER_MAIN, owner=runtime.registry)


def test_a_release_handled_before_its_begin_leaves_nothing_counted(data_dir: Path) -> None:
    runtime = LocalRuntime(data_dir=data_dir)
    worker = Worker(version_id=7, pid=os.getpid(), port=1234)
    runtime._workers[7] = worker
    try:
        runtime.release(7, 1234, run_id="r1")
        runtime.begin(7, 1234, "r1")
        assert worker.in_flight == 0
        runtime.begin(7, 1234, "r2")
        assert worker.in_flight == 1
        runtime.release(7, 1234, run_id="r2")
        assert worker.in_flight == 0
    finally:
        runtime._workers.clear()
        runtime.close(timeout=2)


def test_a_run_on_a_recorded_worker_that_is_gone_falls_back_to_acquire(
    owner: tuple[LocalRuntime, ControlServer], data_dir: Path, tmp_path: Path
) -> None:
    """The worker was SIGKILLed behind the controller's back: its record is still there,
    the direct request is refused, and the run goes the acquire way (a new worker)."""
    runtime, _server = owner
    spec = make_spec(tmp_path / "src")
    web = RemoteRuntime(ControlClient(data_dir), grace=1)
    try:
        first = web.run(spec, run_id="r1", task_id="hello", payload=None, timeout=30)
        old = runtime._workers[1]
        os.killpg(old.pid, signal.SIGKILL)
        wait_until(old.gone, "the killed worker to be gone")
        assert runtime.records.read(1) is not None
        second = web.run(spec, run_id="r2", task_id="hello", payload=None, timeout=30)
    finally:
        web.close(timeout=1)
    assert second["status"] == "completed"
    assert runtime._workers[1].pid != old.pid
    assert second["output"]["pid"] != first["output"]["pid"]


def test_a_recorded_port_that_another_version_took_is_not_used(
    owner: tuple[LocalRuntime, ControlServer], data_dir: Path, tmp_path: Path
) -> None:
    """A stale record of version 2 names version 1's port: the worker refuses the run
    (it checks the version id) and version 2 gets a worker of its own."""
    runtime, _server = owner
    web = RemoteRuntime(ControlClient(data_dir), grace=1)
    one, two = make_spec(tmp_path / "one", 1), make_spec(tmp_path / "two", 2)
    try:
        web.run(one, run_id="r1", task_id="hello", payload=None, timeout=30)
        port = runtime._workers[1].port
        runtime.records.write(
            Worker(version_id=2, pid=runtime._workers[1].pid, port=port), version="x"
        )
        answer = web.run(two, run_id="r2", task_id="hello", payload=None, timeout=30)
    finally:
        web.close(timeout=1)
    assert answer["status"] == "completed"
    assert runtime._workers[2].port != port


def test_a_worker_retired_with_a_direct_run_in_flight_finishes_it(
    owner: tuple[LocalRuntime, ControlServer], data_dir: Path, tmp_path: Path
) -> None:
    runtime, _server = owner
    spec = make_spec(tmp_path / "src")
    marker, go = tmp_path / "marker", tmp_path / "go"
    web = RemoteRuntime(ControlClient(data_dir), grace=1)
    try:
        web.run(spec, run_id="r1", task_id="hello", payload=None, timeout=30)
        worker = runtime._workers[1]
        with ThreadPoolExecutor(1) as pool:
            held = hold_run(pool, web, spec, marker=marker, go=go)
            wait_until(marker.exists, "the held run to start")
            runtime.retire(1)
            assert runtime.records.read(1) is None
            go.write_text("")
            answer = held.result(60)
        wait_until(worker.gone, "the retired worker to exit")
    finally:
        web.close(timeout=1)
    assert answer["status"] == "completed"


def test_a_request_that_never_ends_does_not_hold_the_shutdown(data_dir: Path) -> None:
    """A peer that connects and never sends its line (or a handler that hangs) used to be
    joined without a bound: the controller never stopped, nor did its workers."""
    release = threading.Event()
    server = ControlServer(data_dir, {"hang": lambda r: release.wait(120)})
    server.start()
    client = ControlClient(data_dir)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(server.path))

    def hang() -> None:
        with contextlib.suppress(RuntimeUnavailable):  # the channel closes under it
            client.call("hang", timeout=120)

    hanging = threading.Thread(target=hang)
    hanging.start()
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: (server.stop(wait=1.0), stopped.set()))
    try:
        deadline = time.monotonic() + 60
        while not (data_dir / "control.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stopper.start()
        assert stopped.wait(60), "stop() waited for requests that never end"
    finally:
        release.set()
        silent.close()
        hanging.join(60)
        stopper.join(60)
