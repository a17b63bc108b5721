"""Issue 7 items 4-6, issue 8 item 2: graceful stops leave nothing running and exit 0.

Each test drives a real ``slipway serve`` and then looks through /proc for any process
whose command line, working directory or environment names the data dir: workers, their
spawners and runs, install and pre-build commands, the controller child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Flow, today
from support.procs import alive
from support.repos import TaskRepo
from support.server import Server

SLOW = """import time
description = "Write the run id to payload['marker'], then sleep payload['seconds']"

def run(payload, ctx):
    with open(payload["marker"], "w") as f:
        f.write(ctx.run_id)
    time.sleep(payload["seconds"])
    return "done"
"""


def processes_of(data_dir: Path) -> dict[int, str]:
    """Live processes (not this one) whose cmdline, cwd or environ mention ``data_dir``."""
    needle = str(data_dir).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes()
            where = os.readlink(entry / "cwd").encode()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if (needle in cmdline or needle in where or needle in environ) and alive(pid):
            found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
    return found


def assert_nothing_left(server: Server) -> None:
    deadline = time.monotonic() + 10
    left = processes_of(server.data_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_of(server.data_dir)
    assert not left, f"processes of the data dir outlived the server: {left}\n{server.log()}"


def assert_clean_exit(server: Server) -> None:
    log = server.log()
    assert server.returncode == 0, f"slipway serve exited {server.returncode}\n{log}"
    assert "Fatal Python error" not in log, log
    assert "the controller process exited with" not in log, log


@pytest.fixture
def slow_flow(tmp_path: Path) -> Iterator[Flow]:
    repo = TaskRepo(tmp_path / "repo")
    repo.write("tasks/slow.py", SLOW)
    repo.commit("a slow task")
    server = Server(tmp_path / "data", extra_env={"SLIPWAY_SHUTDOWN_GRACE_PERIOD": "3"})
    try:
        server.start()
        flow = Flow(server, repo)
        flow.connect()
        yield flow
    finally:
        server.close()
        for pid in processes_of(server.data_dir):  # a failed test leaves nothing behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def trigger_in_background(server: Server, payload: Any) -> tuple[threading.Thread, dict[str, Any]]:
    key = server.secret_key("demo", "production")
    answer: dict[str, Any] = {}

    def post() -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as client:
                response = client.post(
                    "/api/v1/tasks/slow/trigger",
                    json={"payload": payload},
                    headers={"Authorization": f"Bearer {key}"},
                )
            answer["status_code"] = response.status_code
            answer["body"] = response.json()
        except (httpx.HTTPError, ValueError) as exc:  # cut off by the shutdown
            answer["error"] = exc

    thread = threading.Thread(target=post)
    thread.start()
    return thread, answer


def test_ctrl_c_during_a_run_stops_it_after_the_grace_period_and_records_it(
    slow_flow: Flow, tmp_path: Path
) -> None:
    server = slow_flow.server
    slow_flow.push()
    slow_flow.deployed()
    marker = tmp_path / "started"
    thread, _answer = trigger_in_background(server, {"marker": str(marker), "seconds": 40})
    server.wait_for(lambda: marker.exists() and marker.read_text(), timeout=60)
    run_id = marker.read_text()

    started = time.monotonic()
    server.interrupt()
    took = time.monotonic() - started
    thread.join(60)
    assert_clean_exit(server)
    assert took < 3 + 20, f"the stop took {took:.1f}s"
    assert_nothing_left(server)

    server.start()
    run = server.ok("GET", f"/api/v1/runs/{run_id}")
    assert run["status"] == "failed", run
    assert "grace period" in run["error"]["message"], run
    server.stop()
    assert_nothing_left(server)
    assert_clean_exit(server)


def test_a_run_in_flight_when_the_server_is_killed_ends_failed_not_running(
    slow_flow: Flow, tmp_path: Path
) -> None:
    server = slow_flow.server
    slow_flow.push()
    slow_flow.deployed()
    marker = tmp_path / "started"
    thread, answer = trigger_in_background(server, {"marker": str(marker), "seconds": 2})
    server.wait_for(lambda: marker.exists() and marker.read_text(), timeout=60)
    run_id = marker.read_text()

    server.kill()  # nobody is left to record the outcome the worker will have
    thread.join(60)
    assert "error" in answer, answer
    server.start()

    def settled() -> dict[str, Any] | None:
        run = server.ok("GET", f"/api/v1/runs/{run_id}")
        return None if run["status"] == "running" else dict(run)

    # The resync (every 2 s here) sees that the process that ran it is gone.
    run = server.wait_for(settled, timeout=120, what=f"run {run_id} to leave 'running'")
    assert run["status"] == "failed", run
    assert run["error"]["type"] == "RunAbandoned", run
    assert "trigger it again" in run["error"]["message"], run


def test_a_run_that_ends_within_the_grace_period_completes(slow_flow: Flow, tmp_path: Path) -> None:
    server = slow_flow.server
    slow_flow.push()
    slow_flow.deployed()
    marker = tmp_path / "started"
    thread, answer = trigger_in_background(server, {"marker": str(marker), "seconds": 1.5})
    server.wait_for(marker.exists, timeout=60)
    server.stop()
    thread.join(60)
    assert answer.get("status_code") == 200, answer
    assert answer["body"]["status"] == "completed", answer
    assert_clean_exit(server)
    assert_nothing_left(server)


def test_graceful_stops_exit_0_without_an_interpreter_abort(flow: Flow) -> None:
    flow.push()
    flow.deployed()
    for _ in range(3):
        flow.server.stop()
        assert_clean_exit(flow.server)
        assert_nothing_left(flow.server)
        flow.server.start()
        assert flow.run()["status"] == "completed"
    flow.server.stop()
    assert_clean_exit(flow.server)


def test_no_worker_is_left_after_pins_promotions_a_crash_and_a_restart(
    server: Server, task_repo: TaskRepo, tmp_path: Path
) -> None:
    flow = Flow(server, task_repo)
    slow = tmp_path / "slow"
    flow.connect(pre_build_command=f"if [ -e {slow} ]; then sleep 120; fi")
    for n in range(1, 3):
        if n > 1:
            task_repo.set_message(f"hello v{n}")
        flow.push()
        flow.deployed()
    first, second = f"{today()}.1", f"{today()}.2"
    assert flow.run(version=first)["output"]["version"] == first  # pinned: starts .1
    server.ok("POST", "/api/v1/projects/demo/environments/production/rollback")
    assert flow.run()["output"]["version"] == first
    server.ok(
        "POST", "/api/v1/projects/demo/environments/production/promote", json={"version": second}
    )
    assert flow.run(version=first)["output"]["version"] == first

    slow.touch()
    task_repo.set_message("hello v3")
    dep = flow.push()
    server.wait_for(
        lambda: server.ok("GET", f"/api/v1/deployments/{dep['id']}")["status"] == "building",
        timeout=60,
    )
    server.kill()  # workers and the pre-build, in sessions of their own, survive
    slow.unlink()
    server.start()
    final = server.wait_deployment(dep["id"], timeout=180)
    assert final["status"] == "deployed", final["error"]
    assert flow.run(version=first)["output"]["version"] == first
    assert flow.run()["output"]["version"] == f"{today()}.3"

    server.stop()
    assert_nothing_left(server)
    assert_clean_exit(server)
