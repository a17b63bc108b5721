"""Which process holds a row: ``host:pid:token`` owner strings and whether one is alive.

A job's lease and a run in flight name the process that holds them. When that process
is gone (a crash, a SIGKILL, a restart), another process on the same host can tell at
once — the pid no longer exists — instead of waiting for a deadline. A process on
another host cannot, so every holder also has a deadline (a lease's expiry, a run's
timeout).
"""

from __future__ import annotations

import os
import random
import socket


def make_owner() -> str:
    """A fresh owner string for this process (a new token each call)."""
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"


_process: tuple[int, str] | None = None


def process_owner() -> str:
    """This process's owner string: the same for its whole life, a new one after a fork."""
    global _process
    pid = os.getpid()
    if _process is None or _process[0] != pid:
        _process = (pid, make_owner())
    return _process[1]


def owner_host(owner: str) -> str:
    return owner.split(":", 1)[0]


def owner_alive(owner: str | None, me: str) -> bool:
    """False only when ``owner`` is certainly gone: a process of this host (the caller
    checks the host) whose pid no longer exists, or an earlier owner of this very pid."""
    if not owner or owner == me:
        return True
    try:
        pid = int(owner.split(":")[1])
    except (IndexError, ValueError):
        return True
    if pid == os.getpid():
        # Same pid, another owner string: an earlier owner in this process (tests restart
        # controllers in one process), which this owner replaced.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
