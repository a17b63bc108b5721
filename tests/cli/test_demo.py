"""Issue 7 item 8: ``slipway demo``'s "where to look" works as printed; no temp dir stays.

The demo runs as the README starts it (the virtualenv's ``slipway``, not on PATH), with
its temp dir under ``tmp_path``. Each printed command is run by a shell whose PATH has no
``slipway`` and whose environment has no Slipway settings: only what is printed counts.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import SLIPWAY
from support.procs import alive

from controller.runtimes.procs import kill_session

pytestmark = pytest.mark.slow

DEADLINE = 240.0  # under the suite's 300 s per-test timeout


# The demo as a person starts it at a terminal, where Ctrl-C works: a process started
# with SIGINT ignored keeps ignoring it (Python installs no KeyboardInterrupt handler
# then), and a CI runner launched in the background (`nohup … &`) ignores it in every
# test. exec keeps the disposition this wrapper resets.
WITH_CTRL_C = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
    env["TMPDIR"] = str(tmp_path)
    return env


class Demo:
    """``slipway demo`` as a subprocess whose output lines are read by a thread."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.proc = subprocess.Popen(
            [*WITH_CTRL_C, str(SLIPWAY), "demo", *args],
            env=_env(tmp_path),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,  # close() stops the demo's own server too
        )
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, marker: str) -> list[str]:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if marker in line:
                return self.seen
        raise AssertionError(f"no {marker!r} in the demo's output:\n" + "\n".join(self.seen))

    def close(self) -> None:
        """Ctrl-C to the demo's whole group (it then stops its server and removes its temp
        dir), and SIGKILL to whatever is left: a failed test leaves no server behind."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)
        for match in re.finditer(r"\(pid (\d+)\)", "\n".join(self.seen)):
            kill_session(int(match.group(1)))  # a server its demo could not stop
        self.reader.join(60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def demo_dirs(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    assert not list(tmp_path.glob("slipway-demo-*")), "the demo left its temp dir behind"


def test_the_kept_server_answers_the_printed_commands(demo_dirs: Path) -> None:
    demo = Demo(demo_dirs, "--keep-running")
    try:
        output = demo.until("Ctrl-C stops it")
        commands = {
            m.group(1): m.group(2)
            for m in (
                re.match(r"  (deployments|versions|run a task|logs)\s+(.+)", x) for x in output
            )
            if m
        }
        assert set(commands) == {"deployments", "versions", "run a task", "logs"}, output
        for command in commands.values():
            assert f"{SLIPWAY} " in command  # the program that ran, not a bare `slipway`
        shell_env = {"PATH": "/usr/bin:/bin", "HOME": str(demo_dirs)}
        results = {
            name: subprocess.run(
                command, shell=True, env=shell_env, capture_output=True, text=True, timeout=120
            )
            for name, command in commands.items()
        }
        for name, result in results.items():
            assert result.returncode == 0, f"{name}: {commands[name]}\n{result.stderr}"
        assert "deployed" in results["deployments"].stdout
        assert '"completed"' in results["run a task"].stdout
        assert "Hello, you!" in results["run a task"].stdout

        server_pid = int(re.search(r"\(pid (\d+)\)", output[-1] + " ".join(output)).group(1))
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(120) == 0
        deadline = time.monotonic() + 60
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(server_pid), "the demo server outlived Ctrl-C"
    finally:
        demo.close()


def test_kill_stops_the_kept_server_as_ctrl_c_does(demo_dirs: Path) -> None:
    """SIGTERM (``kill <pid>``): the demo stops its server, which runs in a session of its
    own, and removes its temp dir (the fixture checks), exit code 0."""
    demo = Demo(demo_dirs, "--keep-running")
    try:
        output = demo.until("Ctrl-C stops it")
        server_pid = int(re.search(r"\(pid (\d+)\)", " ".join(output)).group(1))
        assert alive(server_pid)
        demo.proc.send_signal(signal.SIGTERM)
        assert demo.proc.wait(120) == 0
        deadline = time.monotonic() + 60
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(server_pid), "the demo server outlived kill"
    finally:
        demo.close()


def test_without_a_terminal_the_demo_stops_and_says_how_to_keep_it(demo_dirs: Path) -> None:
    demo = Demo(demo_dirs)
    try:
        output = demo.until("demo --keep-running")
        assert output[-1].strip() == f"{SLIPWAY} demo --keep-running"
        assert not any("Where to look" in line for line in output)
        assert demo.proc.wait(120) == 0
    finally:
        demo.close()
