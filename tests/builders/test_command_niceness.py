"""A build command runs in a session of its own; on kernels with autogroups that session
keeps the controller's niceness (controller.niceness) instead of competing with the HTTP
process as an equal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller import niceness

pytestmark = pytest.mark.skipif(
    not os.access("/proc/self/autogroup", os.W_OK),
    reason="no autogroups here (or /proc is read-only)",
)

# Runs in a child at nice +10, as the controller does: a build command's view of itself.
NICED_CONTROLLER = """
import os, sys
from pathlib import Path
from controller.builders.commands import run_command
os.nice(10)
lines = []
run_command(
    ["sh", "-c", "cat /proc/self/autogroup; ps -o sid= -p $$"],
    cwd=Path.cwd(), env=dict(os.environ), timeout=120, log=lines.append, label="probe",
)
print("\\n".join(lines))
"""


def test_a_build_commands_session_keeps_the_controllers_niceness(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NICED_CONTROLLER],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "nice 10" in out, out
    assert str(os.getsid(0)) not in out.split()  # it did get a session of its own


def test_keep_sets_a_new_sessions_autogroup_to_the_processes_niceness() -> None:
    child = subprocess.Popen(
        ["sleep", "120"], start_new_session=True, preexec_fn=lambda: os.nice(7)
    )
    try:
        before = Path(f"/proc/{child.pid}/autogroup").read_text()
        assert before.rstrip().endswith("nice 0")  # what setsid() gives: the bug
        niceness.keep(child.pid)
        assert Path(f"/proc/{child.pid}/autogroup").read_text().rstrip().endswith("nice 7")
    finally:
        child.kill()
        child.wait()
    niceness.keep(child.pid)  # gone: nothing raised


def test_keep_leaves_an_un_niced_process_alone() -> None:
    child = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        niceness.keep(child.pid)
        assert Path(f"/proc/{child.pid}/autogroup").read_text().rstrip().endswith("nice 0")
    finally:
        child.kill()
        child.wait()
