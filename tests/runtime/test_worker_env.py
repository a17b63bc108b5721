"""A run's ``env`` reaches its process's ``os.environ`` and ``ctx.env``, for that run only."""

from __future__ import annotations

import time
from pathlib import Path

from test_worker_main import processes_for, running_worker, write_repo

ENV_TASK = """
import os


def run(payload, ctx):
    left = os.environ.get("LEFT_BEHIND")
    os.environ["LEFT_BEHIND"] = "by an earlier run"
    return {"os": os.environ.get("API_URL"), "ctx": ctx.env.get("API_URL"), "left": left}
"""


def test_each_run_sees_its_own_environment(tmp_path: Path) -> None:
    source = write_repo(tmp_path / "repo", {"tasks/envcheck.py": ENV_TASK})
    with running_worker(source) as worker:
        first = worker.run("envcheck", {}, env={"API_URL": "https://x"}).json()
        assert first["status"] == "completed", first
        assert first["output"] == {"os": "https://x", "ctx": "https://x", "left": None}
        second = worker.run("envcheck", {}, env={"API_URL": "https://y"}).json()
        assert second["output"]["os"] == second["output"]["ctx"] == "https://y"
        third = worker.run("envcheck", {}).json()
        assert third["output"]["os"] is None, "a run without variables sees none of the last"
        assert third["output"]["left"] is None, "what a run sets dies with its process"
        bad = worker.run("envcheck", {}, env={"A": 1})
        assert bad.status_code == 400


HOME_TASK = """
import os


def run(payload, ctx):
    return {"home": os.environ.get("HOME"), "ctx": ctx.env.get("HOME"), "n": len(ctx.env)}
"""


def test_a_variable_over_the_workers_own_is_undone_for_the_next_run(tmp_path: Path) -> None:
    """A run's variables live in its own process: the next run sees the worker's own."""
    source = write_repo(tmp_path / "repo", {"tasks/home.py": HOME_TASK})
    many = {f"VAR_{i:03d}": "v" * 100 for i in range(500)}
    with running_worker(source) as worker:
        own = worker.run("home", {}).json()["output"]
        first = worker.run("home", {}, env={"HOME": "/elsewhere", **many}).json()["output"]
        assert first["home"] == first["ctx"] == "/elsewhere"
        assert first["n"] == own["n"] + 500
        again = worker.run("home", {}, env={"HOME": "/elsewhere", **many}).json()["output"]
        assert again == first
        after = worker.run("home", {}).json()["output"]
        assert after == own


SPARE_TASK = """
import os

seen = []


def run(payload, ctx):
    seen.append(payload)
    left = os.environ.get("SET_BY_A_RUN")
    os.environ["SET_BY_A_RUN"] = "yes"
    return {"pid": os.getpid(), "seen": seen, "token": os.environ.get("TOKEN"), "set": left}
"""


def test_a_run_takes_a_child_forked_before_it_and_inherits_nothing_of_the_last(
    tmp_path: Path,
) -> None:
    """The spawner keeps a spare child forked ahead: the next run's pid is a process that
    existed before its request was sent, yet it sees neither the last run's variables
    nor its module state."""
    source = write_repo(tmp_path / "repo", {"tasks/spare.py": SPARE_TASK})
    with running_worker(source) as worker:
        first = worker.run("spare", 1, env={"TOKEN": "secret-of-run-1"}).json()
        assert first["output"]["token"] == "secret-of-run-1"
        deadline = time.monotonic() + 60
        while first["output"]["pid"] in processes_for(source) or len(processes_for(source)) < 3:
            assert time.monotonic() < deadline, "no spare child was forked after run 1"
            time.sleep(0.02)
        before = set(processes_for(source))  # worker, spawner, spare
        second = worker.run("spare", 2).json()
        assert second["status"] == "completed", second
        assert second["output"]["pid"] in before, "run 2 paid a fork of its own"
        assert second["output"]["token"] is None
        assert second["output"]["seen"] == [2]
        assert second["output"]["set"] is None
