"""Issue 8 items 3 and 4 at the runtime: previews scale to zero, runs take milliseconds.

Real workers (``worker_main.py`` under this interpreter) on a small task tree. Latency
bounds are generous for a loaded 2-core machine yet far below what the old worker cost
(a ~44 ms Nagle stall per reused connection plus a health check per run); idle wake-ups
are counted through ``/proc/<pid>/task/*/status``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_control import make_spec

from controller.runtimes.base import VersionSpec
from controller.runtimes.local import WORKER_MAIN, LocalRuntime
from controller.runtimes.procs import session_of, workers_marked


def wait_for(check: Callable[[], bool], *, deadline: float = 30.0) -> None:
    until = time.monotonic() + deadline
    while not check():
        if time.monotonic() > until:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def preview(root: Path, version_id: int) -> VersionSpec:
    spec = make_spec(root, version_id)
    context = {**spec.context, "environment": "preview", "branch": f"b{version_id}"}
    return dataclasses.replace(spec, context=context)


@pytest.fixture
def runtime_of(tmp_path: Path) -> Iterator[Callable[..., LocalRuntime]]:
    made: list[LocalRuntime] = []

    def make(**kwargs: float) -> LocalRuntime:
        data = tmp_path / f"data{len(made)}"
        data.mkdir()
        runtime = LocalRuntime(data_dir=data, **kwargs)  # type: ignore[arg-type]
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close(timeout=2)
        assert not workers_marked(WORKER_MAIN, owner=runtime.registry)


def run(runtime: LocalRuntime, spec: VersionSpec, task: str = "hello", **payload: str) -> dict:
    return runtime.run(spec, run_id="run_t", task_id=task, payload=payload or None, timeout=60)


def switches(pid: int) -> int:
    """Context switches of every thread of ``pid``: each is a wake-up or a preemption."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def session_pids(sid: int) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and session_of(int(p.name)) == sid
    ]


def test_warm_runs_reuse_the_live_worker(
    runtime_of: Callable[..., LocalRuntime], tmp_path: Path
) -> None:
    """Warm runs go to the worker already running; how fast they are is measured by
    tests/benchmarks/previews.py (a timed assertion here would fail on a busy machine)."""
    runtime = runtime_of()
    spec = make_spec(tmp_path / "src")
    run(runtime, spec)
    (pid,) = workers_marked(WORKER_MAIN, owner=runtime.registry)
    for _ in range(30):
        assert run(runtime, spec)["status"] == "completed"
    assert workers_marked(WORKER_MAIN, owner=runtime.registry) == {pid}


def test_an_idle_worker_does_not_wake_up(
    runtime_of: Callable[..., LocalRuntime], tmp_path: Path
) -> None:
    runtime = runtime_of()
    spec = make_spec(tmp_path / "src")
    run(runtime, spec)
    (pid,) = workers_marked(WORKER_MAIN, owner=runtime.registry)
    wait_for(lambda: len(session_pids(pid)) == 3)  # the worker, spawner, spare run child
    processes = session_pids(pid)
    before = sum(switches(p) for p in processes)
    time.sleep(3)  # the measurement window itself, not a wait for an event
    after = sum(switches(p) for p in processes)
    assert after - before <= 3, f"{after - before} wake-ups in 3 s"


def test_a_dead_worker_is_replaced_by_the_next_run(
    runtime_of: Callable[..., LocalRuntime], tmp_path: Path
) -> None:
    runtime = runtime_of()
    spec = make_spec(tmp_path / "src")
    first = run(runtime, spec)["output"]
    (pid,) = workers_marked(WORKER_MAIN, owner=runtime.registry)
    recorded = runtime.records.read(spec.version_id)
    port = recorded.port if recorded else None
    os.killpg(pid, signal.SIGKILL)
    # Gone means its port refuses connections: a killed multi-threaded process shows as a
    # zombie before its last thread has closed its sockets, so the pid alone says too early.
    wait_for(lambda: session_of(pid) is None and _refused(port))
    answer = run(runtime, spec)
    assert answer["status"] == "completed" and answer["output"] != first
    assert workers_marked(WORKER_MAIN, owner=runtime.registry) != {pid}


def _refused(port: int | None) -> bool:
    if port is None:
        return True
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def test_an_idle_preview_stops_and_the_next_run_starts_it(
    runtime_of: Callable[..., LocalRuntime], tmp_path: Path
) -> None:
    runtime = runtime_of(preview_idle_timeout=0.5)
    branch, production = preview(tmp_path / "p", 1), make_spec(tmp_path / "prod", 2)
    run(runtime, branch)
    run(runtime, production)
    time.sleep(0.6)  # let the idle timeout pass: the state under test
    assert runtime.stop_idle_previews() == 1
    assert runtime.serving() == {2}  # production stays warm
    wait_for(lambda: len(workers_marked(WORKER_MAIN, owner=runtime.registry)) == 1)
    assert run(runtime, branch)["status"] == "completed"
    assert runtime.serving() == {1, 2}


def test_a_zero_idle_timeout_never_stops_a_preview(
    runtime_of: Callable[..., LocalRuntime], tmp_path: Path
) -> None:
    runtime = runtime_of(preview_idle_timeout=0)
    run(runtime, preview(tmp_path / "p", 1))
    assert runtime.stop_idle_previews() == 0
    assert runtime.serving() == {1}


def test_at_most_the_cap_of_previews_live_least_recently_used_first(
    runtime_of: Callable[..., LocalRuntime], tmp_path: Path
) -> None:
    runtime = runtime_of(max_live_previews=2)
    specs = [preview(tmp_path / f"p{i}", i) for i in (1, 2, 3)]
    run(runtime, specs[0])
    run(runtime, specs[1])
    run(runtime, specs[0])  # 2 is now the least recently used
    run(runtime, specs[2])
    assert runtime.serving() == {1, 3}
    wait_for(lambda: len(workers_marked(WORKER_MAIN, owner=runtime.registry)) == 2)
    assert run(runtime, specs[1])["status"] == "completed"
    assert runtime.serving() == {3, 2}


def test_the_cap_never_stops_a_run_in_flight(
    runtime_of: Callable[..., LocalRuntime], tmp_path: Path
) -> None:
    runtime = runtime_of(max_live_previews=1)
    busy, other = preview(tmp_path / "p1", 1), preview(tmp_path / "p2", 2)
    marker = tmp_path / "started"
    answers: list[dict] = []
    runner = threading.Thread(
        target=lambda: answers.append(
            runtime.run(busy, run_id="r", task_id="nap", payload={"marker": str(marker)}, timeout=3)
        )
    )
    runner.start()
    try:
        wait_for(marker.exists)
        assert run(runtime, other)["status"] == "completed"  # once the busy one is done
        assert runtime.serving() == {2}  # the cap holds: the idle worker was stopped
    finally:
        runner.join(60)
    assert answers[0]["status"] == "timed_out"  # its own limit, not a stop
