"""The CPUs the controller process and its builds run on: ``SLIPWAY_CONTROLLER_CPUS``.

``slipway serve`` is two processes (see :mod:`controller.supervisor`): HTTP (webhook
intake, the API, runs) and the controller (routing, builds, resync), which runs at
``nice`` +10. On a 2-core VM whose kernel does not preempt a task inside a system call
(``PREEMPT_NONE``, common on cloud images), the niced controller and its git and build
commands still delayed the HTTP process's wake-ups: during a burst of 1,000 pull
requests the webhook ack p99 was 1.6-2.1x an idle server's (p50 unchanged, p90 +60%).
Neither ``SCHED_IDLE`` nor ``SCHED_BATCH`` for the controller, nor a shorter EEVDF slice
for the HTTP process, changed that, and the inbox's fsync was not it either (without it
the ratio stayed 1.5x); routing alone, with no build, reproduced it. Keeping the
controller and everything it runs off one CPU brought it to 0.97x (all measured with
``tests/benchmarks/previews.py --n 1000``). So the controller can leave the first CPU
to the HTTP process:

* ``all`` (default): nothing is confined;
* ``auto``: every CPU this process may use but the lowest-numbered one, when it may use
  two or more; with one CPU nothing is confined;
* a list such as ``1-3,5``: those CPUs, of the ones this process may use.

Workers run the teams' tasks, which must not lose a core to this. A worker's start (an
interpreter importing the version's tasks) and its exit are deploy work and happen on
the controller's CPUs; in between, from its ready line until it is told to stop, it has
every CPU the server had (:func:`widen_tree`, :func:`narrow_tree`). Workers started on
every CPU left the ratio at 1.6x; as built it measured 1.25x, 1.35x and 1.19x (what
still shares the first CPU with HTTP is the workers' own work: answering the resync's
health checks and the promotions).

It is not the default because of what it costs where it helps: on 2 cores the burst of
1,000 previews deployed in 213-249 s instead of ~130 s, to take a few milliseconds off
an ack p99 of ~10 ms; and one deployment at a time took longer too (push -> serving
p50 234 ms against 163 ms, ``tests/benchmarks/core_loop.py``). On a machine with many
cores one CPU for webhooks, the API and runs costs a smaller share (not measured here:
these machines have 2).

Affinity is a property of each thread, inherited by the threads and processes it
creates: :func:`confine` runs first thing in the controller process, before it starts
any thread, and never in a process that also serves HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_original: set[int] | None = None  # the CPUs before confine(): the workers' while serving
_chosen: set[int] | None = None  # the controller's


def parse(value: str) -> str | set[int]:
    """``auto``, ``all`` or the set of CPUs ``value`` lists; ValueError if it is none."""
    text = value.strip().lower().replace(" ", "")
    if text in ("auto", "all"):
        return text
    if not _LIST.match(text):
        raise ValueError(
            f"SLIPWAY_CONTROLLER_CPUS={value!r}: use auto, all or a CPU list such as 1-3,5"
        )
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"SLIPWAY_CONTROLLER_CPUS={value!r}: {part} is an empty range")
        cpus.update(range(low, high + 1))
    return cpus


def allowed() -> set[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def choose(value: str, available: set[int]) -> set[int] | None:
    """The CPUs for the controller given ``available``; None: no confinement."""
    wanted = parse(value)
    if wanted == "all":
        return None
    if wanted == "auto":
        return available - {min(available)} if len(available) >= 2 else None
    assert isinstance(wanted, set)
    chosen = wanted & available
    if not chosen:
        raise ValueError(
            f"SLIPWAY_CONTROLLER_CPUS={value!r} names none of the CPUs this process may "
            f"use ({format_list(available)})"
        )
    return None if chosen == available else chosen


def confine(value: str) -> set[int] | None:
    """Confine the calling thread (and what it starts later) as ``value`` says; the
    CPUs chosen, or None when nothing was confined (or the system cannot)."""
    global _original, _chosen
    if not hasattr(os, "sched_setaffinity"):
        return None
    available = allowed()
    chosen = choose(value, available)
    if chosen is None:
        return None
    try:
        os.sched_setaffinity(0, chosen)
    except OSError as exc:
        log.warning("could not confine the controller to CPUs %s: %s", format_list(chosen), exc)
        return None
    _original, _chosen = available, chosen
    log.info(
        "controller and builds on CPU(s) %s, HTTP and workers on %s (SLIPWAY_CONTROLLER_CPUS=%s)",
        format_list(chosen),
        format_list(available),
        value,
    )
    return chosen


def widen_tree(pid: int) -> None:
    """Give process ``pid``, every thread of it and every process it started (a worker:
    its HTTP threads, its spawner and the spawner's spare child) the CPUs the controller
    had before :func:`confine`, once it is ready to serve runs."""
    _set_tree(pid, _original)


def narrow_tree(pid: int) -> None:
    """Put process ``pid`` and its descendants back on the controller's CPUs: a worker
    being stopped, whose exit (freeing its memory, in the kernel) is the controller's
    work too. With stops left on every CPU, the burst's ack ratio was 1.24x."""
    _set_tree(pid, _chosen)


def _set_tree(pid: int, cpus: set[int] | None) -> None:
    """Best effort: a thread or process that is gone, or a system that refuses, keeps
    what it has; a process forked while this runs may too (a run's child, gone soon)."""
    if cpus is None:
        return
    todo, seen = [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            tasks = [int(t.name) for t in Path(f"/proc/{current}/task").iterdir()]
        except OSError:
            tasks = [current]
        for tid in tasks:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)
            with contextlib.suppress(OSError, ValueError):
                children = Path(f"/proc/{current}/task/{tid}/children").read_text()
                todo.extend(int(child) for child in children.split())


def format_list(cpus: set[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``0-2,5``."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive CPUs
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{first}-{last}" if last != first else str(first) for first, last in runs)
