"""Finding and killing a data dir's worker processes through /proc (Linux).

Workers run in sessions of their own (they outlive a SIGKILLed controller, to be
adopted), so a process group kill misses their runs, which sit in groups of their own.
The session is what ties a worker, its spawner, its runs and their subprocesses
together; it is what we kill. Without /proc (not Linux) these find nothing and kill
only the worker's own group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")


def _pids() -> list[int]:
    if not PROC.is_dir():
        return []
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def session_of(pid: int) -> int | None:
    """The session id of a live process; None when it is gone or a zombie."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[3])


def kill_session(sid: int, *, wait: float = 10.0) -> None:
    """SIGKILL every live process of session ``sid`` (a worker, its spawner, its runs) and
    wait up to ``wait`` seconds until none is left alive, killing any it forks meanwhile:
    a SIGKILLed process still shows as running until the kernel delivers the signal, so
    returning at once would let a caller see "stopped" runs still at work. Zombies, which
    their parent or init reaps, count as gone."""
    deadline = time.monotonic() + wait
    while True:
        members = [pid for pid in _pids() if session_of(pid) == sid]
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signal.SIGKILL)
        if not members or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def workers_marked(script: Path, *, owner: Path) -> set[int]:
    """Session leaders running ``script`` with ``--owner OWNER`` on their command line;
    a standby still waiting for its version is not a worker yet (see :func:`waiting`)."""
    mark = ["--owner", str(owner)]
    found = set()
    for pid in _pids():
        try:
            raw = (PROC / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        args = [arg.decode(errors="replace") for arg in raw.split(b"\0")]
        marked = any(args[i : i + 2] == mark for i in range(len(args) - 1))
        if marked and str(script) in args and session_of(pid) == pid and not waiting(pid, args):
            found.add(pid)
    return found


def waiting(pid: int, args: list[str]) -> bool:
    """A ``--standby`` whose stdin is still the pipe from its owner: it has not been given
    a version (a standby given one reads /dev/null from then on), and it exits by itself
    when that pipe closes."""
    if "--standby" not in args:
        return False
    try:
        return os.readlink(PROC / str(pid) / "fd" / "0").startswith("pipe:")
    except OSError:
        return False


def sessions_with_env(name: str, value: str) -> set[int]:
    """Sessions with a live process whose environment has ``name=value``."""
    entry = f"{name}={value}".encode()
    found = set()
    for pid in _pids():
        try:
            environ = (PROC / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry in environ:
            sid = session_of(pid)
            if sid is not None:
                found.add(sid)
    return found
