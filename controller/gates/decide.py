"""Pure: what a gate decides from the signals recorded for a commit.

Signals are taken in the order GitHub numbered them (status and check run ids grow),
and the first decisive one wins: a ``failure`` reported before a ``success`` fails the
deployment even if a later retry succeeded, because by then the deployment ended.

* ``github-deployment:NAME``: deployment statuses whose environment is NAME, compared
  case-insensitively; Slipway's own ``slipway/…`` environments never count.
  ``success`` passes; ``failure`` and ``error`` fail, naming the environment, the
  app's GitHub deployment and its log URL; ``queued``, ``in_progress``, ``pending``,
  ``inactive`` decide nothing.
* ``check-run:NAME``: a check run named NAME that completed ``success`` passes; one that
  completed with any other conclusion fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from controller.gates.spec import Gate

PENDING_CHECK_STATES = frozenset({"queued", "in_progress", "requested", "waiting", "pending"})


class Signal(Protocol):
    kind: str
    name: str
    state: str
    github_id: int
    deployment_id: int | None
    url: str | None


@dataclass(frozen=True)
class Decision:
    outcome: str  # pass | fail | timeout
    message: str


def decide(gate: Gate, signals: Iterable[Signal]) -> Decision | None:
    ordered = sorted(signals, key=lambda s: s.github_id)
    if gate.kind == "github-deployment":
        return _github_deployment(gate, ordered)
    if gate.kind == "check-run":
        return _check_run(gate, ordered)
    return None


def _github_deployment(gate: Gate, signals: list[Signal]) -> Decision | None:
    wanted = gate.target.lower()
    for s in signals:
        name = s.name.lower()
        if s.kind != "deployment_status" or name != wanted or name.startswith("slipway/"):
            continue
        where = f"GitHub environment {s.name}"
        app = f"deployment {s.deployment_id}" if s.deployment_id else "the app's deployment"
        if s.state == "success":
            return Decision("pass", f"{app} in {where} succeeded")
        if s.state in ("failure", "error"):
            log = f"; its log: {s.url}" if s.url else ""
            return Decision(
                "fail",
                f"the app's {app} in {where} ended {s.state}{log}; "
                "the new version was not promoted",
            )
    return None


def _check_run(gate: Gate, signals: list[Signal]) -> Decision | None:
    for s in signals:
        if s.kind != "check_run" or s.name != gate.target or s.state in PENDING_CHECK_STATES:
            continue
        if s.state == "success":
            return Decision("pass", f"check run {s.name} completed success")
        details = f"; details: {s.url}" if s.url else ""
        return Decision(
            "fail",
            f"check run {s.name} completed {s.state}{details}; the new version was not promoted",
        )
    return None
