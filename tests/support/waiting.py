"""Waiting in tests: for an event, or by polling until a generous deadline.

The suite runs on loaded machines (CI on 2 shared cores, the controller process at
``nice`` +10 behind everything else), where a step that takes 50 ms alone can take 30 s.
So a test never sleeps a fixed time hoping that something has happened, and never
asserts how fast something was (benchmarks measure speed). It waits for the thing
itself, with :func:`poll_until`, whose deadline only bounds how long a *broken* test
takes to fail: it costs nothing when the condition holds early.

Every deadline goes through :func:`scaled`: ``SLIPWAY_TEST_TIMEOUT_SCALE=3`` triples
them all (and pytest's per-test timeout, see ``tests/conftest.py``) on a slower machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SCALE = float(os.environ.get("SLIPWAY_TEST_TIMEOUT_SCALE", "1") or "1")
DEFAULT_TIMEOUT = 60.0


def scaled(seconds: float) -> float:
    """``seconds`` times ``SLIPWAY_TEST_TIMEOUT_SCALE``: use for every deadline."""
    return seconds * SCALE


def poll_until(
    predicate: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    what: str = "",
    context: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    ``timeout`` (scaled) is a deadline for failing, not an expected duration. On
    timeout an ``AssertionError`` names ``what``, the last value and ``context()`` (a
    server log, say)."""
    deadline = time.monotonic() + scaled(timeout)
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise AssertionError(
                f"timed out after {scaled(timeout):g}s waiting"
                f"{' for ' + what if what else ''}; last value: {last!r}{extra}"
            )
        time.sleep(interval)
        last = predicate()
    return last
