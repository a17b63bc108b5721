"""Looking at processes from tests, through /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name: [0] state, [1] ppid, [16] nice, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        return stat_fields(pid)[0] != "Z"
    except OSError:
        return False
