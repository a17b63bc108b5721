"""Issue: webhook intake — newest wins, and an acknowledged delivery survives SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import REPO, Flow
from support import payloads
from support.procs import stat_fields
from support.server import Server


def test_three_quick_pushes_the_middle_one_is_superseded(
    server: Server, task_repo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    flow = Flow(server, task_repo)
    # A held pre-build keeps the first deployment busy until all three are routed (a
    # "sleep 2" could end first on a busy machine, and then nothing is superseded). The
    # next two are pushed once it has started: a deployment still queued is superseded
    # too (the newest request wins), and on a loaded machine the controller (nice +10)
    # may not have started the first before the second arrives; the middle one then ran.
    hold = tmp_path / "hold"
    hold.touch()
    flow.connect(pre_build_command=f"while [ -e {hold} ]; do sleep 0.05; done")
    shas = [task_repo.head(), task_repo.set_message("v2"), task_repo.set_message("v3")]
    befores = ["0" * 40, *shas[:2]]

    def push(index: int) -> None:
        payload = payloads.push(repo=REPO, before=befores[index], after=shas[index])
        assert server.deliver("push", payload).status_code == 202

    try:
        push(0)
        first = flow.deployment_for(shas[0])["id"]
        server.wait_for(  # its job is claimed: it no longer waits in the queue
            lambda: server.ok("GET", f"/api/v1/deployments/{first}")["status"] != "queued",
            timeout=240,
        )
        push(1)
        push(2)
        deps = {d["sha"]: d for d in (flow.deployment_for(sha) for sha in shas)}
    finally:
        hold.unlink(missing_ok=True)
    last = server.wait_deployment(deps[shas[2]]["id"])
    assert last["status"] == "deployed"
    middle = server.ok("GET", f"/api/v1/deployments/{deps[shas[1]]['id']}")
    assert middle["status"] == "superseded"
    assert deps[shas[2]]["id"] in middle["error"]
    assert flow.run()["output"]["message"] == "v3"


def test_delivery_acknowledged_before_sigkill_is_processed_after_restart(
    server: Server, task_repo
) -> None:  # type: ignore[no-untyped-def]
    flow = Flow(server, task_repo)
    flow.connect()
    sha = task_repo.head()
    response = server.deliver(
        "push", payloads.push(repo=REPO, after=sha, before="0" * 40), delivery="kill-me"
    )
    assert response.status_code == 202
    server.kill()  # right after the 202: the delivery is on disk, its routing may not have run
    server.start()
    final = flow.deployed(sha)
    assert final["delivery"] == "kill-me"
    assert len([d for d in server.deployments() if d["sha"] == sha]) == 1
    # redelivering the same id after the restart is still processed once
    again = server.deliver(
        "push", payloads.push(repo=REPO, after=sha, before="0" * 40), delivery="kill-me"
    )
    assert again.status_code == 202 and again.json()["duplicate"] is True
    assert len([d for d in server.deployments() if d["sha"] == sha]) == 1


def test_unsigned_delivery_leaves_no_trace(server: Server, task_repo) -> None:  # type: ignore[no-untyped-def]
    flow = Flow(server, task_repo)
    flow.connect()
    body = payloads.push(repo=REPO, after=task_repo.head(), before="0" * 40)
    assert server.deliver("push", body, secret="").status_code == 401
    assert server.deliver("push", body, signature="sha256=" + "0" * 64).status_code == 401
    assert server.deployments() == []
    assert server.ok("GET", "/api/v1/projects/demo/events") == []


def _controller_pid(server: Server) -> int:
    assert server.proc is not None
    # Each thread lists the children it started (a restarted controller: the watcher's).
    children = [
        int(pid)
        for task in Path(f"/proc/{server.proc.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    (pid,) = [pid for pid in children if "controller" in _cmdline(pid)]
    return pid


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _niceness(pid: int) -> int:
    return int(stat_fields(pid)[16])


def test_the_controller_runs_at_a_lower_cpu_priority_than_intake(server: Server) -> None:
    assert server.proc is not None
    web, controller = _niceness(server.proc.pid), _niceness(_controller_pid(server))
    assert controller == min(web + 10, 19), (web, controller)  # 19: the lowest priority


def test_intake_answers_while_the_controller_is_down_and_nothing_is_lost(
    server: Server, task_repo
) -> None:  # type: ignore[no-untyped-def]
    flow = Flow(server, task_repo)
    flow.connect()
    sha = task_repo.head()
    first = _controller_pid(server)
    os.kill(first, signal.SIGKILL)  # the controller alone dies; the server restarts it
    response = server.deliver(
        "push", payloads.push(repo=REPO, after=sha, before="0" * 40), delivery="while-down"
    )
    assert response.status_code == 202, response.text
    assert response.json()["duplicate"] is False
    final = flow.deployed(sha)
    assert final["delivery"] == "while-down"
    assert _controller_pid(server) != first


def _delivery_rows(data_dir: Path) -> tuple[list[tuple[str, bool]], int]:
    """(delivery id, processed) of every row in deliveries, and what waits in the inbox."""
    main = sqlite3.connect(f"file:{data_dir / 'slipway.db'}?mode=ro", uri=True)
    try:
        rows = main.execute(
            "SELECT delivery_id, processed_at IS NOT NULL FROM deliveries"
        ).fetchall()
    finally:
        main.close()
    inbox = sqlite3.connect(f"file:{data_dir / 'slipway.inbox.db'}?mode=ro", uri=True)
    try:
        waiting = inbox.execute("SELECT count(*) FROM inbox").fetchone()[0]
    finally:
        inbox.close()
    return [(d, bool(p)) for d, p in rows], int(waiting)


def test_a_burst_acknowledged_before_a_crash_is_routed_once_after_restart(
    server: Server,
) -> None:
    payloads.require_node_modules()
    # Freeze the controller: the burst stays in the inbox, as it would if the machine
    # died before the controller moved it.
    controller = _controller_pid(server)
    os.kill(controller, signal.SIGSTOP)
    ids = [f"burst-{n}" for n in range(200)]
    body = payloads.body_of(payloads.push(repo="octo-org/unknown", before="a" * 40, after="b" * 40))

    def send(delivery: str) -> int:
        return server.deliver("push", body, delivery=delivery).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(send, ids))
    assert statuses == [202] * len(ids)
    rows, waiting = _delivery_rows(server.data_dir)
    assert (rows, waiting) == ([], len(ids)), "all 200 are in the inbox, none moved yet"

    server.kill()  # the stopped controller dies with the server (PR_SET_PDEATHSIG)
    server.start()

    def routed() -> list[tuple[str, bool]] | None:
        rows, waiting = _delivery_rows(server.data_dir)
        return rows if waiting == 0 and len(rows) == len(ids) and all(p for _, p in rows) else None

    def progress() -> str:
        rows, waiting = _delivery_rows(server.data_dir)
        done = sum(1 for _, p in rows if p)
        return f"{waiting} in the inbox, {len(rows)} moved, {done} routed"

    # 200 deliveries routed by a controller at nice +10 after a cold restart: under
    # other load that is minutes of its CPU share, not seconds; the deadline only
    # bounds how long a stuck intake takes to fail (before pytest's 300 s per-test
    # timeout, so the failure says how far it got).
    rows = server.wait_for(routed, timeout=200, what="the burst routed", context=progress)
    assert sorted(d for d, _ in rows) == sorted(ids), "each one exactly once"
    again = server.deliver("push", body, delivery=ids[0])
    assert again.status_code == 202 and again.json()["duplicate"] is True
