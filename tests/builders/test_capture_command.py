"""``capture_command`` (what ``sync_env_vars`` runs with): stdout is data, never logged;
stderr is logged; output is bounded; a command that hangs is killed at its timeout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.builders.commands import capture_command, minimal_env
from controller.errors import BuildFailed


def _run(tmp_path: Path, command: str, **kw: object) -> tuple[int, bytes | None, list[str]]:
    lines: list[str] = []
    result, out = capture_command(
        command,
        cwd=tmp_path,
        env=minimal_env(venv=None, home=tmp_path),
        log=lines.append,
        label="sync",
        **{"timeout": 60.0, **kw},  # type: ignore[arg-type]
    )
    return result.exit_code, out, lines


def test_stdout_is_returned_and_only_stderr_is_logged(tmp_path: Path) -> None:
    code, out, lines = _run(tmp_path, "echo 'A=secret-value'; echo progress >&2; exit 0")
    assert code == 0 and out == b"A=secret-value\n"
    assert lines == ["progress"]


def test_output_over_the_bound_is_refused(tmp_path: Path) -> None:
    code, out, _ = _run(tmp_path, "head -c 5000 /dev/zero", max_stdout=1000)
    assert code == 0 and out is None


def test_a_command_that_hangs_is_killed_at_its_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(BuildFailed, match="timed out"):
        _run(tmp_path, "sleep 60", timeout=1.0)
    assert time.monotonic() - started < 30
