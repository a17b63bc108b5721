"""Giving freed heap memory back to the system (glibc).

glibc's ``malloc`` keeps what a program frees in its arenas for the next allocation, and
a long-lived process that went through a burst (1,000 deliveries routed, 1,000 previews
deployed, their pages listed) keeps megabytes of freed memory resident that it will not
use again soon. ``malloc_trim(0)`` returns the free pages of every arena to the kernel.
It scans the arenas with their locks held, so it runs from the periodic passes (the
controller's resync, the web process's checkpoint thread every ``interval`` seconds),
never on a request. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def trim() -> None:
    """Return freed heap pages to the kernel."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class PeriodicTrim:
    """A callable for a periodic loop that trims at most once per ``interval`` seconds."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            trim()
