"""Issue 8 item 3 against a real ``slipway serve``: previews scale to zero, under a cap.

The acceptance reads "with 60 previews and a cap of 50, at most 50 preview workers are
live"; 12 previews under a cap of 10 exercise the same code (the cap evicts the least
recently used idle worker whenever a start would pass it) in a fraction of the time on a
loaded machine. Small timeouts: previews stop after 3 s without runs, and the resync
(which stops them) runs every 2 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Flow
from support.repos import TaskRepo
from support.server import Server

from controller.runtimes.local import WORKER_MAIN
from controller.runtimes.procs import workers_marked

PREVIEWS = 12
CAP = 10


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(
        tmp_path / "data",
        extra_env={
            "SLIPWAY_PREVIEW_IDLE_TIMEOUT": "3",
            "SLIPWAY_MAX_LIVE_PREVIEW_WORKERS": str(CAP),
        },
    )
    try:
        yield srv.start()
    finally:
        srv.close()


def live_workers(server: Server) -> set[int]:
    return workers_marked(WORKER_MAIN, owner=server.data_dir / "workers")


def test_previews_stop_when_idle_stay_under_the_cap_and_start_on_the_next_run(
    small_server: Server, task_repo: TaskRepo
) -> None:
    flow = Flow(small_server, task_repo)
    flow.connect(preview_limit=PREVIEWS)  # the project default is 10
    flow.push()
    flow.deployed()
    (production,) = live_workers(small_server)
    branches = [f"feature/{i}" for i in range(PREVIEWS)]
    heads = {}
    for number, branch in enumerate(branches, start=1):
        task_repo.checkout("main")
        task_repo.checkout(branch, create=True)
        heads[branch] = task_repo.set_message(f"hello {branch}")
        flow.pull_request("opened", branch=branch, sha=heads[branch], number=number)
    peak = 0

    def all_deployed() -> bool:
        nonlocal peak
        peak = max(peak, len(live_workers(small_server)))
        envs = flow.environments()
        return all(envs.get(b, {}).get("current_version") for b in branches)

    small_server.wait_for(all_deployed, timeout=300, interval=0.5)
    assert peak <= CAP + 1
    for branch in branches:
        answer = flow.run(env="preview", branch=branch)
        assert answer["status"] == "completed" and answer["output"]["message"] == f"hello {branch}"
        assert len(live_workers(small_server)) <= CAP + 1  # production + the cap

    # Idle for the timeout: every preview worker stops; production stays warm.
    small_server.wait_for(lambda: live_workers(small_server) == {production}, timeout=60)
    answer = flow.run(env="preview", branch=branches[0])
    assert answer["output"]["message"] == f"hello {branches[0]}"
    assert len(live_workers(small_server)) == 2
    assert flow.run()["output"]["message"] == "hello v1"
    assert production in live_workers(small_server)
