"""``SLIPWAY_CONTROLLER_CPUS`` on a real ``slipway serve``: with ``auto`` the controller
process and its builds leave the first CPU to the HTTP process, and the workers it starts
(they run the teams' tasks) get every CPU the server had; by default nothing is confined."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Flow
from support.repos import TaskRepo
from support.server import Server

from controller.cpus import choose

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs two or more CPUs to leave one free"
)


def _children(pid: int) -> list[int]:
    """As ``controller.cpus`` finds a worker's processes: each thread's children list."""
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def _cmdline(pid: int) -> str:
    return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode()


def _controller(server: Server) -> int:
    assert server.proc is not None
    (pid,) = [p for p in _children(server.proc.pid) if "controller.child" in _cmdline(p)]
    return pid


@pytest.fixture
def leaving_a_cpu(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", extra_env={"SLIPWAY_CONTROLLER_CPUS": "auto"})
    try:
        yield srv.start()
    finally:
        srv.close()


def test_by_default_the_controller_has_every_cpu(server: Server) -> None:
    assert os.sched_getaffinity(_controller(server)) == os.sched_getaffinity(0)


def test_auto_leaves_a_cpu_to_http_and_workers_get_every_cpu(
    leaving_a_cpu: Server, task_repo: TaskRepo
) -> None:
    server = leaving_a_cpu
    flow = Flow(server, task_repo)
    flow.connect()
    available = os.sched_getaffinity(0)  # the server inherits the test's CPUs
    flow.deployed(flow.push()["sha"])
    assert flow.run()["status"] == "completed"

    assert server.proc is not None
    http = server.proc.pid
    controller = _controller(server)
    assert os.sched_getaffinity(http) == available
    assert os.sched_getaffinity(controller) == choose("auto", available)
    assert os.sched_getaffinity(controller) == available - {min(available)}

    records = list((server.data_dir / "workers").glob("*.json"))
    assert records, "the deployment left a worker record"
    for record in records:
        worker = json.loads(record.read_text())["pid"]
        assert os.sched_getaffinity(worker) == available, _cmdline(worker)
