"""The cap on live preview workers: one count, and the start decision under its lock.

``SLIPWAY_MAX_LIVE_PREVIEW_WORKERS`` bounds the preview worker *processes* alive at once.
The old cap was checked after a start, under the started version's own lock, and its
eviction ran in a reaper thread: concurrent starts of different previews (deploys' health
steps, the resync, runs arriving over the control channel) each started, then each
evicted, and the evicted workers were still draining while they were counted out, so a
burst saw cap + the number of starts in flight.

Now a slot is taken before a preview worker starts (or is adopted) and given back only
when its process is gone: starting, serving, draining and being evicted all hold one.
:meth:`PreviewSlots.reserve` decides under one lock: when every slot is held it calls
``evict``, which stops the least recently used idle preview worker and waits for it to
exit (its slot comes back through :meth:`PreviewSlots.give_back`, from the same thread:
the lock is reentrant), and only then takes the slot. Starts themselves run outside the
lock, so previews still start in parallel up to the cap.

When every held slot belongs to a worker with a run in flight (or draining), nothing is
evicted: a run is never cut off. The start then waits for a slot (a run ends, a worker
drains) up to its deadline and fails with :class:`RuntimeUnavailable`, a temporary error
(the deploy step retries, the run says why). A hard cap is what keeps 1,000 previews
within memory; exceeding it when busy would make it no bound at all.

Lock order: a version's lock, then this one; under this one a version's lock is only
tried (never waited for), so two starts never wait on each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from controller.errors import RuntimeUnavailable

RECHECK = 0.25  # a worker that turns idle is noticed by its release's notify; this is a floor


class PreviewSlots:
    def __init__(self, cap: int, *, stopping: threading.Event) -> None:
        self.cap = cap
        self.held = 0
        self.stopping = stopping
        self._changed = threading.Condition(threading.RLock())

    def reserve(self, *, evict: Callable[[], bool], timeout: float) -> None:
        """Take a slot, evicting idle workers (``evict`` returns False when none could
        be stopped) or waiting for one to free up, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.held >= self.cap:
                if self.stopping.is_set():
                    raise RuntimeUnavailable("the controller is stopping and starts no worker")
                if evict():
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeUnavailable(
                        f"all {self.cap} live preview workers have runs in flight "
                        "(SLIPWAY_MAX_LIVE_PREVIEW_WORKERS); try again when one is done",
                        delay=5.0,
                    )
                self._changed.wait(min(remaining, RECHECK))
            self.held += 1

    def give_back(self) -> None:
        with self._changed:
            self.held -= 1
            self._changed.notify_all()

    def notify(self) -> None:
        """A worker turned idle: a waiting start may evict it now."""
        with self._changed:
            self._changed.notify_all()
