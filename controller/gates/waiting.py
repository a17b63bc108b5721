"""The database side of waiting: which deployments wait, and asking for a decision.

Everything here runs inside a caller's transaction. A decision is never applied here:
it is a ``promote`` job on the environment's queue key (so it never runs beside a deploy
of the same environment), which the pipeline runs once (see :mod:`controller.gates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from controller.domain.environments import env_key
from controller.errors import Conflict
from controller.gates.decide import Decision, decide
from controller.gates.spec import Gate, parse_gate
from controller.models import WAITING
from controller.queue import Queue
from controller.store.gates import (
    hold_environment_for_promotion,
    lock_deployment,
    newer_request,
    open_decision_payloads,
    signals_of_commit,
    waiting_deployments_with_repo,
)
from controller.store.tables import Deployment

PROMOTE_JOB = "promote"


class NoLongerWaiting(Conflict):
    """A passed gate's promotion found its deployment no longer the one to promote:
    ``status`` is what it is (or, for a newer request, becomes: ``superseded``)."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Waiting:
    deployment_id: str
    environment_id: int
    repo: str
    sha: str
    gate: Gate
    since: datetime | None
    deadline: datetime | None


def schedule_timeout(session: Session, *, deployment: Deployment, deadline: datetime) -> None:
    """The deadline's own decision: a ``promote`` job that is due at ``deadline`` and
    ends the deployment ``timed_out`` if it still waits then."""
    Queue.add(
        session,
        kind=PROMOTE_JOB,
        key=env_key(deployment.environment_id),
        deployment_id=deployment.id,
        payload={"outcome": "timeout"},
        run_after=deadline,
    )


def request_decision(session: Session, *, deployment_id: str, environment_id: int, decision: Decision) -> bool:  # fmt: skip
    """Queue ``decision`` for a waiting deployment, unless one is already queued."""
    queued = open_decision_payloads(session, deployment_id, kind=PROMOTE_JOB)
    if any(payload.get("outcome") in ("pass", "fail") for payload in queued):
        return False
    Queue.add(
        session,
        kind=PROMOTE_JOB,
        key=env_key(environment_id),
        deployment_id=deployment_id,
        payload={"outcome": decision.outcome, "message": decision.message},
    )
    return True


def waiting_deployments(session: Session, *, repo_lower: str | None = None, sha: str | None = None) -> list[Waiting]:  # fmt: skip
    found = []
    for dep, repo in waiting_deployments_with_repo(session, repo_lower=repo_lower, sha=sha):
        assert dep.gate is not None
        found.append(
            Waiting(
                deployment_id=dep.id,
                environment_id=dep.environment_id,
                repo=repo,
                sha=dep.sha or "",
                gate=parse_gate(dep.gate),
                since=dep.waiting_since,
                deadline=dep.gate_deadline,
            )
        )
    return found


def decide_commit(session: Session, *, repo_lower: str, sha: str) -> list[str]:
    """Decide the deployments of ``sha`` that wait, from the signals recorded for it;
    the ids of those a decision was queued for."""
    decided = []
    for waiting in waiting_deployments(session, repo_lower=repo_lower, sha=sha):
        decision = decide_from_signals(session, waiting)
        if decision is not None and request_decision(
            session,
            deployment_id=waiting.deployment_id,
            environment_id=waiting.environment_id,
            decision=decision,
        ):
            decided.append(waiting.deployment_id)
    return decided


def decide_from_signals(session: Session, waiting: Waiting) -> Decision | None:
    signals = signals_of_commit(session, repo_lower=waiting.repo.lower(), sha=waiting.sha)
    return decide(waiting.gate, signals)


def check_still_promotable(session: Session, *, deployment_id: str) -> None:
    """Inside the transaction that makes a passed gate's version current: raise
    :class:`NoLongerWaiting` unless the deployment still waits and no newer request for
    its environment exists. The locks (see :mod:`controller.store.gates`) order this
    against a request that supersedes it: whichever commits first wins, so an older
    version never becomes current after a newer request for its environment."""
    found = session.get(Deployment, deployment_id)
    assert found is not None
    hold_environment_for_promotion(session, found.environment_id)  # first: see the locks
    row = lock_deployment(session, deployment_id)
    assert row is not None
    if row.status != WAITING:
        raise NoLongerWaiting(row.error or f"it is {row.status}", status=row.status)
    newer = newer_request(
        session,
        environment_id=row.environment_id,
        deployment_id=row.id,
        created_at=row.created_at,
    )
    if newer is not None:
        raise NoLongerWaiting(
            f"superseded by {newer.id} before its promotion committed; the current "
            "version is unchanged",
            status="superseded",
        )
