"""Issue 8 item 2: one owner of worker processes, reached over the control channel.

The controller's :class:`LocalRuntime` behind a :class:`ControlServer`; "web processes"
are :class:`RemoteRuntime` clients. Workers are real (``worker_main.py`` under this
interpreter's virtualenv) on a small task tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from controller.errors import PermanentError, RuntimeUnavailable
from controller.runtimes.base import ArtifactRef, VersionSpec
from controller.runtimes.control import ControlClient, ControlServer, RemoteRuntime, spec_from_json
from controller.runtimes.local import WORKER_MAIN, LocalRuntime
from controller.runtimes.procs import session_of, workers_marked

TASKS = {
    "tasks/hello.py": "def run(payload, ctx):\n    return {'pid': __import__('os').getpid()}\n",
    "tasks/nap.py": (
        "import time\n"
        "def run(payload, ctx):\n"
        "    open(payload['marker'], 'w').write(str(__import__('os').getpid()))\n"
        "    time.sleep(120)\n"
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
        "acquire": lambda r: runtime.acquire(spec_from_json(r["spec"])),
        "release": lambda r: runtime.release(int(r["version_id"]), int(r["port"])),
        "refused": lambda r: runtime.refused(int(r["version_id"]), int(r["port"])),
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
