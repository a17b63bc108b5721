"""``SLIPWAY_CONTROLLER_CPUS``: what each value means for the controller's CPUs, and a
clear error for a value that means nothing (see :mod:`controller.cpus`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from controller.cpus import choose, format_list, parse
from controller.settings import RuntimeSettings


def test_auto_leaves_the_lowest_cpu_free_when_there_are_two_or_more() -> None:
    assert choose("auto", {0, 1}) == {1}
    assert choose("auto", {2, 3, 5}) == {3, 5}  # a server already confined by taskset
    assert choose("auto", {4}) is None  # one CPU: nothing to leave


def test_all_confines_nothing_and_a_list_keeps_the_cpus_this_process_may_use() -> None:
    assert choose("all", {0, 1, 2, 3}) is None
    assert choose("1-2", {0, 1, 2, 3}) == {1, 2}
    assert choose(" 1, 3-5 ", {0, 1, 2, 3, 4}) == {1, 3, 4}
    assert choose("0-3", {0, 1, 2, 3}) is None  # every CPU: nothing confined


def test_a_list_naming_none_of_the_cpus_is_refused_with_the_ones_there_are() -> None:
    with pytest.raises(ValueError, match=r"names none of the CPUs.*\(0-1\)"):
        choose("6-7", {0, 1})


@pytest.mark.parametrize("value", ["", "one", "1-", "-1", "1,,2", "2-1", "auto,1"])
def test_a_value_that_is_no_cpu_list_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="SLIPWAY_CONTROLLER_CPUS"):
        parse(value)


def test_the_setting_is_checked_when_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPWAY_CONTROLLER_CPUS", "first")
    with pytest.raises(ValidationError, match="use auto, all or a CPU list"):
        RuntimeSettings()
    one = str(max(os.sched_getaffinity(0)))  # a CPU this machine lets the test use
    monkeypatch.setenv("SLIPWAY_CONTROLLER_CPUS", one)
    assert RuntimeSettings().controller_cpus == one
    monkeypatch.delenv("SLIPWAY_CONTROLLER_CPUS")
    assert RuntimeSettings().controller_cpus == "all"  # the default: nothing confined


def test_cpu_lists_are_written_as_ranges() -> None:
    assert format_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_list({3}) == "3"


TREE = r"""
import json, os, subprocess, sys, threading
from controller import cpus

available = os.sched_getaffinity(0)
chosen = cpus.confine("auto")  # this process is the controller now
# A worker as the controller starts it: a process with a thread and a child of its own.
worker = subprocess.Popen([sys.executable, "-c", '''
import subprocess, sys, threading, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print(child.pid, flush=True)
time.sleep(60)
'''], stdout=subprocess.PIPE, text=True)
grandchild = int(worker.stdout.readline())
def masks():
    tids = [int(t) for t in os.listdir(f"/proc/{worker.pid}/task")]
    return sorted({str(sorted(os.sched_getaffinity(t))) for t in [*tids, grandchild]})
started = masks()
cpus.widen_tree(worker.pid)
widened = masks()
cpus.narrow_tree(worker.pid)
narrowed = masks()
worker.kill()
os.kill(grandchild, 9)
print(json.dumps({"available": sorted(available), "chosen": sorted(chosen),
                  "started": started, "widened": widened, "narrowed": narrowed}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two or more CPUs")
def test_a_workers_threads_and_children_are_widened_then_narrowed_again() -> None:
    out = subprocess.run(
        [sys.executable, "-c", TREE], capture_output=True, text=True, check=True, timeout=120
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    available, chosen = seen["available"], seen["chosen"]
    assert chosen == available[1:]
    assert seen["started"] == [str(chosen)]  # inherited from the confined controller
    assert seen["widened"] == [str(available)]  # every thread and the child
    assert seen["narrowed"] == [str(chosen)]


def test_a_list_of_cpus_this_machine_does_not_let_us_use_stops_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked where ``slipway serve`` loads its settings, not first in the controller
    process, which would exit and be restarted again and again."""
    monkeypatch.setenv("SLIPWAY_CONTROLLER_CPUS", "4096")
    with pytest.raises(ValidationError, match="names none of the CPUs"):
        RuntimeSettings()
