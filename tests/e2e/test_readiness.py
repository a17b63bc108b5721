"""The controller process: ``/readyz`` is ready only once it has started, not when it
exists, and it stops cleanly.

The controller runs at ``nice`` +10; on a busy machine it took up to a minute to import
and migrate, while ``/readyz`` already said ready and deliveries waited unrouted. Here the
controller's start is held deterministically: the test takes the SQLite write lock
(``slipway.db.writelock``, a ``flock``) that its migration must get, then kills the
controller so that the server starts a new one, which blocks in its migration.
"""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

from support.procs import alive
from support.server import Server
from support.waiting import poll_until


def _controller_pids(server: Server) -> list[int]:
    assert server.proc is not None
    pids = [
        int(pid)
        for task in Path(f"/proc/{server.proc.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    return [
        pid
        for pid in pids
        if alive(pid) and b"controller" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_readyz_waits_for_a_starting_controller(server: Server) -> None:
    (first,) = _controller_pids(server)
    assert server.client.get("/readyz").status_code == 200

    with open(server.data_dir / "slipway.db.writelock", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the next controller's migration waits for it
        os.kill(first, signal.SIGKILL)
        poll_until(
            lambda: [pid for pid in _controller_pids(server) if pid != first],
            timeout=120,
            what="the server to start a new controller",
        )
        response = server.client.get("/readyz")
        assert response.status_code == 503, response.text
        problems = response.json()["problems"]
        # "is starting" once the new child exists, "being restarted" just before it does.
        assert any(p.startswith("the controller process is") for p in problems), problems
        fcntl.flock(lock, fcntl.LOCK_UN)

    # As long as Server.start allows: a niced controller starts slowly on a busy machine.
    poll_until(lambda: server.client.get("/readyz").status_code == 200, timeout=180, what="/readyz")


def test_a_stopped_controller_exits_without_aborting(server: Server) -> None:
    """Its wake-up reader, blocked on stdin, once made interpreter shutdown abort."""
    server.stop()
    assert "Fatal Python error" not in server.log()
