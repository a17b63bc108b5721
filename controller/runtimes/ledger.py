"""The controller's count of runs the web process sent straight to a worker.

A run whose worker the web process found in the registry skips ``acquire`` (a round trip
to the niced controller that cost ~3 ms of a ~25 ms run). The controller must still see
such runs: the idle timeout and the preview LRU pass over a worker with a run in flight,
and an evicted worker is SIGKILLed after a short drain. So the web process sends
``begin`` before the run and ``release`` after it, both without waiting for an answer.

Both go as datagrams read in order by one thread, but one that cannot go as a datagram
(the controller's queue stayed full) goes as a connection, handled in a thread of its
own, so a ``release`` can still be handled before its ``begin``. Pairing them by run id makes the order
irrelevant: a ``release`` without a ``begin`` leaves a tombstone that the late ``begin``
consumes, so the count never sticks at one (a worker that looks busy forever would never
scale to zero). Tombstones are bounded: a ``begin`` lost for good only leaves one behind.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Protocol

TOMBSTONES = 10_000


class Counted(Protocol):
    in_flight: int
    last_used: float


class RunLedger:
    def __init__(self) -> None:
        self._begun: dict[str, Counted] = {}
        self._released: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def begin(self, run_id: str, worker: Counted | None) -> None:
        """Count ``run_id`` on ``worker`` (None: no such worker any more) unless its
        release came first."""
        with self._lock:
            if self._released.pop(run_id, 0) is None:
                return
            if worker is not None:
                worker.in_flight += 1
                worker.last_used = time.monotonic()
                self._begun[run_id] = worker

    def release(self, run_id: str) -> bool:
        """Uncount ``run_id``; False when its ``begin`` has not been seen (yet)."""
        with self._lock:
            worker = self._begun.pop(run_id, None)
            if worker is None:
                self._released[run_id] = None
                while len(self._released) > TOMBSTONES:
                    self._released.popitem(last=False)
                return False
            worker.in_flight = max(0, worker.in_flight - 1)
            worker.last_used = time.monotonic()
            return True
