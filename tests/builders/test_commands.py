"""User commands (install, pre-build): what a killed controller leaves running is stopped
by the next one, and nothing else is."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.procs import alive
from support.waiting import poll_until, scaled

from controller.builders.commands import CommandRegistry, minimal_env, run_command


@pytest.fixture
def group(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A command as run_command starts it: a shell in a session of its own, with a child."""
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_command_left_running_by_a_killed_controller_is_stopped_with_its_children(
    tmp_path: Path, group: subprocess.Popen[bytes]
) -> None:
    CommandRegistry(tmp_path / "commands").add(group.pid)  # then the controller "died"
    (sleeper,) = poll_until(lambda: children(group.pid), what="the shell's child")

    next_controller = CommandRegistry(tmp_path / "commands")
    assert next_controller.reap() == 1

    assert group.wait(timeout=scaled(60)) == -9
    poll_until(lambda: not alive(sleeper), what="the whole process group, not only the shell")
    assert list((tmp_path / "commands").iterdir()) == []


def test_a_pid_reused_by_another_process_is_left_alone(
    tmp_path: Path, group: subprocess.Popen[bytes]
) -> None:
    registry = CommandRegistry(tmp_path / "commands")
    (tmp_path / "commands" / str(group.pid)).write_text("1")  # started at another time

    assert registry.reap() == 0

    assert group.poll() is None
    assert list((tmp_path / "commands").iterdir()) == []


def test_a_finished_command_is_no_longer_registered(tmp_path: Path) -> None:
    registry = CommandRegistry(tmp_path / "commands")
    seen: list[list[str]] = []

    def log(line: str) -> None:
        seen.append(sorted(p.name for p in registry.directory.iterdir()))

    result = run_command(
        "echo running",
        cwd=tmp_path,
        env=minimal_env(venv=None, home=tmp_path),
        timeout=scaled(60),
        log=log,
        label="test command",
        registry=registry,
    )

    assert result.exit_code == 0
    assert len(seen) == 1 and len(seen[0]) == 1, "registered while it ran"
    assert list(registry.directory.iterdir()) == []
    assert registry.reap() == 0
