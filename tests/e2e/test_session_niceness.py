"""Workers of a real ``slipway serve`` run at the controller's niceness, autogroup included
(controller.niceness): each is in a session of its own, which on kernels with autogroups
would otherwise compete with the HTTP process at full weight."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Flow
from support.repos import TaskRepo
from support.server import Server

from controller.supervisor import CONTROLLER_NICENESS

pytestmark = pytest.mark.skipif(
    not os.access("/proc/self/autogroup", os.W_OK),
    reason="no autogroups here (or /proc is read-only)",
)


def _autogroup_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/autogroup").read_text().split("nice")[1])


def test_a_workers_own_session_keeps_the_controllers_niceness(
    server: Server, task_repo: TaskRepo
) -> None:
    flow = Flow(server, task_repo)
    flow.connect()
    flow.deployed(flow.push()["sha"])
    assert flow.run()["status"] == "completed"

    records = list((server.data_dir / "workers").glob("*.json"))
    assert records, "the deployment left a worker record"
    for record in records:
        worker = json.loads(record.read_text())["pid"]
        assert os.getsid(worker) == worker  # a session (and so an autogroup) of its own
        assert os.getpriority(os.PRIO_PROCESS, worker) == CONTROLLER_NICENESS
        assert _autogroup_nice(worker) == CONTROLLER_NICENESS
