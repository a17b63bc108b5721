"""Discovery standbys, run for real: an interpreter started ahead of need serves exactly
one discovery with the same result a cold run gives, is replaced at once, is never
shared between environments, and never outlives ``close()``."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.builders.venv import VirtualenvBuilder
from controller.errors import BuildFailed

PID_TASK = """
import os
from pathlib import Path

Path(__file__).resolve().parents[1].joinpath("pids.txt").open("a").write(f"{os.getpid()}\\n")
description = "records the pid of the process that imported it"

def run(payload, ctx):
    return "ok"
"""


@pytest.fixture()
def warm(tmp_path: Path) -> Iterator[tuple[VirtualenvBuilder, Path]]:
    data = tmp_path / "data"
    builder = VirtualenvBuilder(
        cache_dir=data / "envs", home_dir=data / "home", python=sys.executable, keep_warm=True
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    prepared = builder.prepare(
        empty, install=None, log=lambda _line: None, cancel=threading.Event(), timeout=300
    )
    yield builder, Path(prepared["venv"])
    builder.close()


def project(root: Path, task: str = PID_TASK) -> Path:
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "tasks" / "job.py").write_text(task)
    return root


def importers(root: Path) -> list[int]:
    pids = root / "pids.txt"
    return [int(line) for line in pids.read_text().split()] if pids.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_the_next_discovery_runs_in_the_interpreter_started_after_the_last(
    warm: tuple[VirtualenvBuilder, Path], tmp_path: Path
) -> None:
    builder, venv = warm
    assert builder.standby is not None
    assert builder.standby.ready() == []  # nothing is started before a first discovery
    first = project(tmp_path / "one")
    tasks = builder.discover(first, venv=venv, tasks_dir="tasks", timeout=120)
    assert [t["id"] for t in tasks] == ["job"]
    assert tasks[0]["description"] == "records the pid of the process that imported it"
    [standby] = builder.standby.ready()
    assert importers(first)[0] != standby

    second = project(tmp_path / "two")
    again = builder.discover(second, venv=venv, tasks_dir="tasks", timeout=120)
    assert again[0]["id"] == "job" and again[0]["file"] == tasks[0]["file"]
    assert importers(second) == [standby], "the ready interpreter was not the one used"
    [replacement] = builder.standby.ready()
    assert replacement != standby


def test_a_standby_reports_broken_task_files_as_a_cold_run_does(
    warm: tuple[VirtualenvBuilder, Path], tmp_path: Path
) -> None:
    builder, venv = warm
    builder.discover(project(tmp_path / "ok"), venv=venv, tasks_dir="tasks", timeout=120)
    broken = project(tmp_path / "broken", PID_TASK + "\nraise RuntimeError('broken at import')\n")
    with pytest.raises(BuildFailed, match="broken at import"):
        builder.discover(broken, venv=venv, tasks_dir="tasks", timeout=120)
    assert len(importers(broken)) == 1


def test_another_environment_never_gets_a_standby_started_for_one(
    warm: tuple[VirtualenvBuilder, Path], tmp_path: Path
) -> None:
    builder, venv = warm
    assert builder.standby is not None
    builder.discover(project(tmp_path / "a"), venv=venv, tasks_dir="tasks", timeout=120)
    [standby] = builder.standby.ready()
    other = tmp_path / "envs" / "another-key"
    other.parent.mkdir()
    other.symlink_to(venv)  # same interpreter, another environment (VIRTUAL_ENV differs)
    root = project(tmp_path / "b")
    builder.discover(root, venv=other, tasks_dir="tasks", timeout=120)
    assert importers(root) != [standby]
    assert standby in builder.standby.ready()


def test_a_dead_standby_costs_a_cold_run_not_the_build(
    warm: tuple[VirtualenvBuilder, Path], tmp_path: Path
) -> None:
    builder, venv = warm
    assert builder.standby is not None
    builder.discover(project(tmp_path / "a"), venv=venv, tasks_dir="tasks", timeout=120)
    [standby] = builder.standby.ready()
    os.kill(standby, 9)
    os.waitid(os.P_PID, standby, os.WEXITED | os.WNOWAIT)
    root = project(tmp_path / "b")
    assert builder.discover(root, venv=venv, tasks_dir="tasks", timeout=120)[0]["id"] == "job"
    assert importers(root) and importers(root) != [standby]


def test_close_stops_every_standby(warm: tuple[VirtualenvBuilder, Path], tmp_path: Path) -> None:
    builder, venv = warm
    assert builder.standby is not None
    builder.discover(project(tmp_path / "a"), venv=venv, tasks_dir="tasks", timeout=120)
    pids = builder.standby.ready()
    assert pids
    builder.close()
    assert builder.standby.ready() == []
    assert not any(alive(pid) for pid in pids)
    root = project(tmp_path / "b")  # still works after close, cold, and starts nothing
    builder.discover(root, venv=venv, tasks_dir="tasks", timeout=120)
    assert builder.standby.ready() == []
